"""Remote-code sources that ``kiln export --format hf`` copies into an exported folder.

``configuration_kiln.py`` and ``modeling_kiln.py`` run on the user's side without kiln installed: they
import only ``torch`` and ``transformers`` (and each other, relatively), and are loaded by the Auto classes
with ``trust_remote_code=True``. The export logic lives in :mod:`kiln.model.hf_remote`.
"""

"""Reading a checkpoint a user hands in (`tbd export CKPT`, `tbd train --ckpt_path`) without running its code.

A Lightning `.ckpt` is a pickle. `torch.load(weights_only=False)` lets a pickle call any importable function
(`os.system`, ...), so a file from elsewhere could run a command before anything checks what it is. Here it
is read with `weights_only=True`: tensors, containers and plain values only (what `tbd train` writes: state
dicts, optimizer and loop states, hyper-parameters of plain types). Anything else is refused with a clear
error, before any of it runs. Resume passes `weights_only=True` to Lightning for the same reason.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from tbd_core.errors import UserError


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, loaded safely; a `UserError` for a missing, unreadable or unsafe file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise UserError(
            f"{path} was refused: it holds objects other than tensors and plain values, which could run code "
            f"when loaded ({why}). `tbd train` checkpoints never do."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable checkpoint ({err})") from err
    if not isinstance(state, dict) or "state_dict" not in state or "hyper_parameters" not in state:
        raise UserError(f"{path} is not a `tbd train` checkpoint (no state_dict / hyper_parameters)")
    return state

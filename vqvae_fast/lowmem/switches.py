"""diffusers-style switches on vqvae_fast's models, mapped to the exact low-memory execution.

``enable_tiling()`` cuts the large activations into tiles (exactly: no blending, the result of
the plain forward); ``enable_slicing()`` runs the samples of a batch one at a time. Both can be
on together; ``disable_*`` turn them off again, and ``use_tiling`` / ``use_slicing`` say which
are on, as on diffusers' ``AutoencoderKL``.
"""

from __future__ import annotations

from . import budget as budgets
from .install import make_config, memory_budget

_TILING = "_vqvae_fast_tiling"
_SLICING = "_vqvae_fast_slicing"


class TilingSwitches:
    def enable_tiling(self, max_memory="lean", *, tiles=None, storage: str = "auto") -> None:
        """Decode / encode in exact tiles: within ``max_memory`` bytes (``"auto"``: the free
        device memory; ``"lean"``, the default: small temporaries, about two of the largest
        activations in all; also ``None``), or cut ``tiles=(rows, cols)`` at every resolution.
        See :func:`vqvae_fast.memory_budget`."""
        max_memory = budgets.LEAN if max_memory is None else max_memory
        make_config(max_memory, tiles, storage)  # checks the arguments before anything changes
        self.__dict__[_TILING] = (budgets.parse(max_memory), tiles, storage)
        self._apply_low_memory()

    def disable_tiling(self) -> None:
        self.__dict__.pop(_TILING, None)
        self._apply_low_memory()

    def enable_slicing(self) -> None:
        """Run the samples of a batch one at a time (exact: every op of the model is per sample)."""
        self.__dict__[_SLICING] = True
        self._apply_low_memory()

    def disable_slicing(self) -> None:
        self.__dict__.pop(_SLICING, None)
        self._apply_low_memory()

    @property
    def use_tiling(self) -> bool:
        return _TILING in self.__dict__

    @property
    def use_slicing(self) -> bool:
        return _SLICING in self.__dict__

    def _apply_low_memory(self) -> None:
        tiling, slicing = self.__dict__.get(_TILING), self.__dict__.get(_SLICING, False)
        batch = 1 if slicing else None
        if tiling is not None:
            max_memory, tiles, storage = tiling
            memory_budget(self, max_memory, tiles=tiles, storage=storage, batch=batch)
        elif slicing:
            memory_budget(self, budgets.LEAN, tiles=(1, 1), storage="device", batch=1)
        else:
            memory_budget(self, None)

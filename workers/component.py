"""What every long-lived component shares: `start()`, `stop()`, and use as `async with`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self


class Component(ABC):
    """`async with component:` starts it and stops it however the block ends."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

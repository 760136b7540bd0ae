"""In-memory stand-ins for the object store: the same contracts the S3 adapter meets, over bytes."""

from worker.errors import NotFound


class Ranged:
    """One object served by HTTP-style inclusive ranges, counting the reads."""

    def __init__(self, data: bytes):
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> bytes:
        self.reads.append((start, end))
        return self.data[start:end + 1]

    @property
    def bytes_read(self) -> int:
        return sum(b - a + 1 for a, b in self.reads)


class MemoryStore:
    """The ObjectStore protocol over a dict of key -> bytes."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.fetches = 0

    def list(self, prefix: str):
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield key, len(self.objects[key])

    def fetch(self, key: str, start: int, end: int) -> bytes:
        self.fetches += 1
        if key not in self.objects:
            raise NotFound("object deleted after it was listed: NoSuchKey")
        return self.objects[key][start:end + 1]

"""GGUF metadata reading for the Python oracles (standard library only): one reader shared by
gguf_ref.py (the numpy forward pass) and spm_bpe.py (the SentencePiece oracle)."""
import struct

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
          10: "<Q", 11: "<q", 12: "<d"}


class Reader:
    def __init__(self, data):
        self.d, self.o = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.o)[0]
        self.o += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.d[self.o:self.o + n].decode("utf-8")
        self.o += n
        return s

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            return [self.value(et) for _ in range(n)]
        return self.take(SCALAR[t])


def read_header(data, who, path):
    """The reader positioned after the metadata, the tensor count and the metadata dict."""
    r = Reader(data)
    if r.take("<I") != 0x46554747:
        raise SystemExit("%s: %s is not GGUF" % (who, path))
    r.take("<I")  # version (2 and 3 share this layout)
    n_t, n_kv = r.take("<Q"), r.take("<Q")
    meta = {}
    for _ in range(n_kv):
        k = r.string()
        meta[k] = r.value(r.take("<I"))
    return r, n_t, meta

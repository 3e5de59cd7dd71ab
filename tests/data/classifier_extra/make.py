"""Re-pickles the oracle's model_full.pth without torch, to test pickle variants torch can write:
- model_full_proto4.pth: the same module, pickle protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE,
  STACK_GLOBAL), as `torch.save(model, f, pickle_protocol=4)` writes;
- dataparallel.pth: the module wrapped as `torch.nn.DataParallel(model)` (tensor names `module.*`).
Run from the repository root: python3 tests/data/classifier_extra/make.py
"""
import io, pickle, sys, types, zipfile

SRC = "tests/data/oracle/classifier/model_full.pth"
OUT = "tests/data/classifier_extra/"

class Call:
    """A recorded call, pickled back as the same call."""
    def __init__(self, f, args): self.f, self.args = f, args
    def __reduce__(self): return (self.f, self.args)

class Module:
    pass

def fake_module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m

def recorder(module, name):
    def f(*args): return Call(f, args)
    f.__module__, f.__qualname__, f.__name__ = module, name, name
    return f

torch = fake_module("torch")
fake_module("torch._utils")
for n in ["_rebuild_tensor_v2", "_rebuild_parameter"]:
    setattr(sys.modules["torch._utils"], n, recorder("torch._utils", n))
for n in ["FloatStorage", "LongStorage"]:
    setattr(torch, n, type(n, (), {"__module__": "torch"}))
classes = {}
def module_class(mod, name):
    key = (mod, name)
    if key not in classes:
        m = sys.modules.get(mod) or fake_module(mod)
        cls = type(name, (Module,), {"__module__": mod, "__qualname__": name})
        setattr(m, name, cls)
        classes[key] = cls
    return classes[key]

class Reader(pickle.Unpickler):
    def find_class(self, mod, name):
        if mod.startswith("torch.nn") or mod == "__main__":
            return module_class(mod, name)
        if mod.startswith("torch"):
            return getattr(sys.modules[mod], name)
        return super().find_class(mod, name)
    def persistent_load(self, pid): return ("PID", pid)

class Writer(pickle.Pickler):
    def persistent_id(self, obj):
        return obj[1] if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "PID" else None

def write(dst, obj, protocol, prefix):
    zin = zipfile.ZipFile(SRC)
    src_prefix = zin.namelist()[0].split("/")[0]
    buf = io.BytesIO()
    Writer(buf, protocol=protocol).dump(obj)
    with zipfile.ZipFile(OUT + dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            name = prefix + info.filename[len(src_prefix):]
            data = buf.getvalue() if info.filename.endswith("data.pkl") else zin.read(info)
            zout.writestr(name, data)

with zipfile.ZipFile(SRC) as z:
    pkl = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
model = Reader(io.BytesIO(pkl)).load()
write("model_full_proto4.pth", model, 4, "model_full_proto4")

dp = module_class("torch.nn.parallel.data_parallel", "DataParallel").__new__(
    module_class("torch.nn.parallel.data_parallel", "DataParallel"))
dp.__dict__ = {k: v for k, v in model.__dict__.items() if k != "_modules"}
from collections import OrderedDict
dp.__dict__["_modules"] = OrderedDict(module=model)
dp.__dict__["dim"] = 0
write("dataparallel.pth", dp, 2, "dataparallel")

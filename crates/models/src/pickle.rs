//! Reading PyTorch `.pth` zip archives without Python.
//!
//! `candle_core::pickle` reads flat state dicts, but a whole pickled module (`torch.save(model)`,
//! like VirNucPro's `300_model.pth`) nests its tensors in `_modules` -> `_parameters`/`_buffers`
//! dictionaries of objects that are only ever "built", never constructed. Its unpickler also clones
//! memo entries (so a mutation after `BINPUT` is lost, and crafted input can blow up exponentially)
//! and panics on short tuples. This module therefore has its own small pickle machine: it never
//! executes anything, it only records the object graph in an arena, so shared objects stay shared
//! and a corrupt file gives an error instead of a panic or an unbounded allocation.
//!
//! Layers: [`Pickle`] (the object graph of one pickle), [`TensorRef`] (a recognised
//! `torch._utils._rebuild_tensor_v2` call), [`Checkpoint`] (the named tensors and scalar
//! attributes of a module or state dict) and [`PthArchive`] (the zip: `*/data.pkl` + `*/data/<key>`).

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// Index of an object in a [`Pickle`]'s arena.
pub type ObjId = usize;

/// One unpickled object. Calls are recorded, never executed.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, kept as its little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<ObjId>),
    List(Vec<ObjId>),
    Dict(Vec<(ObjId, ObjId)>),
    Set(Vec<ObjId>),
    /// A `module.name` reference (`GLOBAL` / `STACK_GLOBAL`).
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)` from `REDUCE`, `NEWOBJ`, `OBJ` or `INST`. Items that the pickle adds to the
    /// result (`SETITEM(S)`, `APPEND(S)`) and the `BUILD` state are recorded on it.
    Call {
        callable: ObjId,
        args: ObjId,
        items: Vec<(ObjId, ObjId)>,
        list: Vec<ObjId>,
        state: Option<ObjId>,
    },
    /// `persistent_load(id)`: in torch archives, a reference to a storage record.
    PersistentId(ObjId),
}

/// The object graph of one pickle.
#[derive(Debug, Clone)]
pub struct Pickle {
    objs: Vec<Obj>,
    root: ObjId,
}

#[derive(Clone, Copy)]
enum Slot {
    Mark,
    Obj(ObjId),
}

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => bail!(
                "pickle is truncated: {n} more bytes needed at offset {}, only {} left",
                self.pos,
                self.data.len() - self.pos
            ),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    /// Length prefixes are checked against what is left, so a corrupt length cannot make us
    /// allocate gigabytes.
    fn len(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| anyhow!("pickle length {n} is too large"))?;
        self.take(n)
    }
    /// Text-protocol argument: everything up to the next newline.
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            bail!(
                "pickle is truncated: no end of line after offset {}",
                self.pos
            )
        };
        self.pos += nl + 1;
        let line = &rest[..nl];
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

fn line_str(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

/// Two's complement little-endian bytes to i64 when it fits.
fn long_from_le(bytes: &[u8]) -> Obj {
    if bytes.is_empty() {
        return Obj::Int(0);
    }
    if bytes.len() > 8 {
        return Obj::BigInt(bytes.to_vec());
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Obj::Int(i64::from_le_bytes(buf))
}

struct Machine {
    objs: Vec<Obj>,
    stack: Vec<Slot>,
    memo: HashMap<u64, ObjId>,
}

impl Machine {
    fn new_obj(&mut self, obj: Obj) -> ObjId {
        self.objs.push(obj);
        self.objs.len() - 1
    }
    fn push(&mut self, obj: Obj) {
        let id = self.new_obj(obj);
        self.stack.push(Slot::Obj(id));
    }
    fn pop(&mut self, op: &str) -> Result<ObjId> {
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            Some(Slot::Mark) => bail!("opcode {op} found a MARK where it expected an object"),
            None => bail!("opcode {op} found an empty stack"),
        }
    }
    fn top(&self, op: &str) -> Result<ObjId> {
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => bail!("opcode {op} expected an object on top of the stack"),
        }
    }
    fn pop_mark(&mut self, op: &str) -> Result<Vec<ObjId>> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            bail!("opcode {op} found no MARK on the stack")
        };
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .map(|s| match s {
                Slot::Obj(id) => id,
                Slot::Mark => unreachable!("rposition found the last mark"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }
    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| anyhow!("pickle refers to memo entry {key}, which was never stored"))?;
        self.stack.push(Slot::Obj(id));
        Ok(())
    }
    fn memo_put(&mut self, key: u64, op: &str) -> Result<()> {
        let id = self.top(op)?;
        self.memo.insert(key, id);
        Ok(())
    }
    fn set_items(&mut self, target: ObjId, pairs: Vec<(ObjId, ObjId)>, op: &str) -> Result<()> {
        match &mut self.objs[target] {
            Obj::Dict(d) => d.extend(pairs),
            Obj::Call { items, .. } => items.extend(pairs),
            other => bail!(
                "opcode {op} adds items to a {}, not a dict",
                kind_name(other)
            ),
        }
        Ok(())
    }
    fn append(&mut self, target: ObjId, values: Vec<ObjId>, op: &str) -> Result<()> {
        match &mut self.objs[target] {
            Obj::List(l) => l.extend(values),
            Obj::Set(s) => s.extend(values),
            Obj::Call { list, .. } => list.extend(values),
            other => bail!("opcode {op} appends to a {}, not a list", kind_name(other)),
        }
        Ok(())
    }
    fn call(&mut self, callable: ObjId, args: ObjId) {
        self.push(Obj::Call {
            callable,
            args,
            items: Vec::new(),
            list: Vec::new(),
            state: None,
        });
    }
}

fn pairs(items: Vec<ObjId>, op: &str) -> Result<Vec<(ObjId, ObjId)>> {
    if !items.len().is_multiple_of(2) {
        bail!(
            "opcode {op} got an odd number of keys and values ({})",
            items.len()
        );
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

fn kind_name(obj: &Obj) -> &'static str {
    match obj {
        Obj::None => "None",
        Obj::Bool(_) => "bool",
        Obj::Int(_) | Obj::BigInt(_) => "int",
        Obj::Float(_) => "float",
        Obj::Str(_) => "str",
        Obj::Bytes(_) => "bytes",
        Obj::Tuple(_) => "tuple",
        Obj::List(_) => "list",
        Obj::Dict(_) => "dict",
        Obj::Set(_) => "set",
        Obj::Global { .. } => "global",
        Obj::Call { .. } => "object",
        Obj::PersistentId(_) => "persistent id",
    }
}

impl Pickle {
    /// Runs the pickle in `data` up to its `STOP` and keeps the object graph. `data` must be one
    /// whole pickle; bytes after `STOP` are ignored.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut input = Input { data, pos: 0 };
        let mut m = Machine {
            objs: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
        };
        loop {
            let at = input.pos;
            let op = input
                .u8()
                .context("pickle ended without a STOP opcode (the file is truncated)")?;
            let step = Self::step(&mut m, &mut input, op);
            match step {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    return Err(
                        e.context(format!("invalid pickle at byte {at} (opcode 0x{op:02x})"))
                    )
                }
            }
        }
        let root = match m.stack.pop() {
            Some(Slot::Obj(id)) => id,
            _ => bail!("pickle stopped with no object on the stack"),
        };
        Ok(Pickle { objs: m.objs, root })
    }

    /// Executes one opcode; `Ok(true)` on `STOP`.
    fn step(m: &mut Machine, r: &mut Input, op: u8) -> Result<bool> {
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    bail!("pickle protocol {proto} is newer than this reader (protocols 0 to 5)");
                }
            }
            // FRAME: a length hint only.
            0x95 => {
                r.u64()?;
            }
            b'.' => return Ok(true),
            b'(' => m.stack.push(Slot::Mark),
            b'0' => {
                m.stack.pop().context("POP on an empty stack")?;
            }
            b'1' => {
                m.pop_mark("POP_MARK")?;
            }
            b'2' => {
                let id = m.top("DUP")?;
                m.stack.push(Slot::Obj(id));
            }
            b'N' => m.push(Obj::None),
            0x88 => m.push(Obj::Bool(true)),
            0x89 => m.push(Obj::Bool(false)),
            b'K' => {
                let v = r.u8()?;
                m.push(Obj::Int(v.into()))
            }
            b'M' => {
                let v = r.u16()?;
                m.push(Obj::Int(v.into()))
            }
            b'J' => {
                let v = r.u32()? as i32;
                m.push(Obj::Int(v.into()))
            }
            0x8a => {
                let n = r.u8()?;
                let bytes = r.len(n.into())?;
                m.push(long_from_le(bytes))
            }
            0x8b => {
                let n = r.u32()?;
                let bytes = r.len(n.into())?;
                m.push(long_from_le(bytes))
            }
            b'I' => {
                let line = line_str(r.line()?);
                let obj = match line.as_str() {
                    "00" => Obj::Bool(false),
                    "01" => Obj::Bool(true),
                    s => Obj::Int(s.trim().parse().with_context(|| format!("bad INT `{s}`"))?),
                };
                m.push(obj)
            }
            b'L' => {
                let line = line_str(r.line()?);
                let s = line.trim().trim_end_matches('L');
                // Beyond i64 the value is of no use to a classifier loader; keep the text.
                m.push(match s.parse::<i64>() {
                    Ok(v) => Obj::Int(v),
                    Err(_) => Obj::BigInt(s.as_bytes().to_vec()),
                })
            }
            b'G' => {
                // BINFLOAT is big-endian, unlike the integers.
                let v = f64::from_be_bytes(r.take(8)?.try_into()?);
                m.push(Obj::Float(v))
            }
            b'F' => {
                let line = line_str(r.line()?);
                let v = line
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("bad FLOAT `{line}`"))?;
                m.push(Obj::Float(v))
            }
            b'X' => {
                let n = r.u32()?;
                let s = r.len(n.into())?;
                m.push(Obj::Str(
                    std::str::from_utf8(s)
                        .context("BINUNICODE string is not UTF-8")?
                        .to_owned(),
                ))
            }
            0x8c => {
                let n = r.u8()?;
                let s = r.len(n.into())?;
                m.push(Obj::Str(
                    std::str::from_utf8(s)
                        .context("SHORT_BINUNICODE string is not UTF-8")?
                        .to_owned(),
                ))
            }
            0x8d => {
                let n = r.u64()?;
                let s = r.len(n)?;
                m.push(Obj::Str(
                    std::str::from_utf8(s)
                        .context("BINUNICODE8 string is not UTF-8")?
                        .to_owned(),
                ))
            }
            // Text-protocol and Python 2 strings: escapes are not decoded (names only matter for
            // messages and dictionary keys, which are plain ASCII in torch checkpoints).
            b'V' => {
                let s = line_str(r.line()?);
                m.push(Obj::Str(s))
            }
            b'S' => {
                let s = line_str(r.line()?);
                let s = s.trim();
                let unquoted = s
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    .unwrap_or(s);
                m.push(Obj::Str(unquoted.to_owned()))
            }
            b'T' => {
                let n = r.u32()?;
                let s = r.len(n.into())?;
                m.push(Obj::Str(String::from_utf8_lossy(s).into_owned()))
            }
            b'U' => {
                let n = r.u8()?;
                let s = r.len(n.into())?;
                m.push(Obj::Str(String::from_utf8_lossy(s).into_owned()))
            }
            b'B' => {
                let n = r.u32()?;
                let b = r.len(n.into())?;
                m.push(Obj::Bytes(b.to_vec()))
            }
            b'C' => {
                let n = r.u8()?;
                let b = r.len(n.into())?;
                m.push(Obj::Bytes(b.to_vec()))
            }
            0x8e | 0x96 => {
                let n = r.u64()?;
                let b = r.len(n)?;
                m.push(Obj::Bytes(b.to_vec()))
            }
            b')' => m.push(Obj::Tuple(Vec::new())),
            b't' => {
                let items = m.pop_mark("TUPLE")?;
                m.push(Obj::Tuple(items))
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(m.pop("TUPLEn")?);
                }
                items.reverse();
                m.push(Obj::Tuple(items))
            }
            b']' => m.push(Obj::List(Vec::new())),
            b'l' => {
                let items = m.pop_mark("LIST")?;
                m.push(Obj::List(items))
            }
            b'a' => {
                let v = m.pop("APPEND")?;
                let target = m.top("APPEND")?;
                m.append(target, vec![v], "APPEND")?
            }
            b'e' => {
                let vs = m.pop_mark("APPENDS")?;
                let target = m.top("APPENDS")?;
                m.append(target, vs, "APPENDS")?
            }
            b'}' => m.push(Obj::Dict(Vec::new())),
            b'd' => {
                let items = m.pop_mark("DICT")?;
                let d = pairs(items, "DICT")?;
                m.push(Obj::Dict(d))
            }
            b's' => {
                let v = m.pop("SETITEM")?;
                let k = m.pop("SETITEM")?;
                let target = m.top("SETITEM")?;
                m.set_items(target, vec![(k, v)], "SETITEM")?
            }
            b'u' => {
                let items = m.pop_mark("SETITEMS")?;
                let d = pairs(items, "SETITEMS")?;
                let target = m.top("SETITEMS")?;
                m.set_items(target, d, "SETITEMS")?
            }
            0x8f => m.push(Obj::Set(Vec::new())),
            0x90 => {
                let vs = m.pop_mark("ADDITEMS")?;
                let target = m.top("ADDITEMS")?;
                m.append(target, vs, "ADDITEMS")?
            }
            0x91 => {
                let items = m.pop_mark("FROZENSET")?;
                m.push(Obj::Set(items))
            }
            b'c' => {
                let module = line_str(r.line()?);
                let name = line_str(r.line()?);
                m.push(Obj::Global { module, name })
            }
            0x93 => {
                let name = m.pop("STACK_GLOBAL")?;
                let module = m.pop("STACK_GLOBAL")?;
                let (Obj::Str(module), Obj::Str(name)) = (&m.objs[module], &m.objs[name]) else {
                    bail!("STACK_GLOBAL needs two strings");
                };
                let g = Obj::Global {
                    module: module.clone(),
                    name: name.clone(),
                };
                m.push(g)
            }
            b'R' => {
                let args = m.pop("REDUCE")?;
                let callable = m.pop("REDUCE")?;
                m.call(callable, args)
            }
            0x81 => {
                let args = m.pop("NEWOBJ")?;
                let class = m.pop("NEWOBJ")?;
                m.call(class, args)
            }
            0x92 => {
                let _kwargs = m.pop("NEWOBJ_EX")?;
                let args = m.pop("NEWOBJ_EX")?;
                let class = m.pop("NEWOBJ_EX")?;
                m.call(class, args)
            }
            b'o' => {
                let mut items = m.pop_mark("OBJ")?;
                if items.is_empty() {
                    bail!("OBJ without a class");
                }
                let class = items.remove(0);
                let args = m.new_obj(Obj::Tuple(items));
                m.call(class, args)
            }
            b'i' => {
                let module = line_str(r.line()?);
                let name = line_str(r.line()?);
                let items = m.pop_mark("INST")?;
                let class = m.new_obj(Obj::Global { module, name });
                let args = m.new_obj(Obj::Tuple(items));
                m.call(class, args)
            }
            b'b' => {
                let state = m.pop("BUILD")?;
                let target = m.top("BUILD")?;
                // `BUILD` on a plain container sets attributes we have no use for.
                if let Obj::Call { state: s, .. } = &mut m.objs[target] {
                    *s = Some(state);
                }
            }
            b'Q' => {
                let pid = m.pop("BINPERSID")?;
                m.push(Obj::PersistentId(pid))
            }
            b'P' => {
                let s = line_str(r.line()?);
                let pid = m.new_obj(Obj::Str(s));
                m.push(Obj::PersistentId(pid))
            }
            b'h' => {
                let k = r.u8()?;
                m.memo_get(k.into())?
            }
            b'j' => {
                let k = r.u32()?;
                m.memo_get(k.into())?
            }
            b'g' => {
                let s = line_str(r.line()?);
                let k = s.trim().parse().with_context(|| format!("bad GET `{s}`"))?;
                m.memo_get(k)?
            }
            b'q' => {
                let k = r.u8()?;
                m.memo_put(k.into(), "BINPUT")?
            }
            b'r' => {
                let k = r.u32()?;
                m.memo_put(k.into(), "LONG_BINPUT")?
            }
            b'p' => {
                let s = line_str(r.line()?);
                let k = s.trim().parse().with_context(|| format!("bad PUT `{s}`"))?;
                m.memo_put(k, "PUT")?
            }
            0x94 => {
                let k = m.memo.len() as u64;
                m.memo_put(k, "MEMOIZE")?
            }
            0x82..=0x84 => bail!("pickle uses the copyreg extension registry (EXT opcodes), which torch checkpoints never do"),
            0x97 | 0x98 => bail!("pickle uses out-of-band buffers, which torch checkpoints never do"),
            other => bail!("unknown pickle opcode 0x{other:02x}; the data is not a pickle or is corrupt"),
        }
        Ok(false)
    }

    pub fn root(&self) -> ObjId {
        self.root
    }

    pub fn get(&self, id: ObjId) -> &Obj {
        &self.objs[id]
    }

    pub fn as_str(&self, id: ObjId) -> Option<&str> {
        match self.get(id) {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self, id: ObjId) -> Option<i64> {
        match self.get(id) {
            Obj::Int(v) => Some(*v),
            Obj::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn as_tuple(&self, id: ObjId) -> Option<&[ObjId]> {
        match self.get(id) {
            Obj::Tuple(v) | Obj::List(v) => Some(v),
            _ => None,
        }
    }

    /// Key/value pairs of a dict, or of the object a call built (`OrderedDict()` + `SETITEMS`).
    pub fn as_mapping(&self, id: ObjId) -> Option<&[(ObjId, ObjId)]> {
        match self.get(id) {
            Obj::Dict(d) => Some(d),
            Obj::Call { items, .. } if !items.is_empty() || self.is_dict_class(id) => Some(items),
            _ => None,
        }
    }

    fn is_dict_class(&self, id: ObjId) -> bool {
        matches!(
            self.class_of(id),
            Some(("collections", "OrderedDict" | "defaultdict"))
                | Some(("builtins" | "__builtin__", "dict"))
        )
    }

    /// Looks a string key up in a mapping.
    pub fn lookup(&self, mapping: ObjId, key: &str) -> Option<ObjId> {
        self.as_mapping(mapping)?
            .iter()
            .find(|(k, _)| self.as_str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// `(module, name)` of the callable that made `id`, or of `id` itself if it is a global.
    pub fn class_of(&self, id: ObjId) -> Option<(&str, &str)> {
        match self.get(id) {
            Obj::Global { module, name } => Some((module, name)),
            Obj::Call { callable, .. } => match self.get(*callable) {
                Obj::Global { module, name } => Some((module, name)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The `BUILD` state of an object, i.e. its `__dict__` for plain Python objects.
    pub fn state(&self, id: ObjId) -> Option<ObjId> {
        match self.get(id) {
            Obj::Call { state, .. } => *state,
            _ => None,
        }
    }

    /// A short description for error messages: `dict`, `__main__.MLPClassifier object`, ...
    pub fn describe(&self, id: ObjId) -> String {
        match (self.get(id), self.class_of(id)) {
            (Obj::Call { .. }, Some((m, n))) => format!("{m}.{n} object"),
            (Obj::Global { module, name }, _) => format!("reference to {module}.{name}"),
            (obj, _) => kind_name(obj).to_owned(),
        }
    }
}

/// Element type of a torch storage, from the class named in its persistent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" | "UntypedStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F64 | Self::F32 | Self::F16 | Self::BF16)
    }
}

impl fmt::Display for StorageDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::F64 => "float64",
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// A tensor as the pickle describes it: a view (offset, shape, stride, in elements) of a storage
/// kept in the archive as `data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage_key: String,
    pub dtype: StorageDtype,
    /// Elements in the storage, as the persistent id states it.
    pub storage_len: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

fn usize_arg(p: &Pickle, id: ObjId, what: &str) -> Result<usize> {
    p.as_int(id)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| {
            anyhow!(
                "tensor {what} is a {}, expected a non-negative integer",
                p.describe(id)
            )
        })
}

fn usize_tuple(p: &Pickle, id: ObjId, what: &str) -> Result<Vec<usize>> {
    let items = p
        .as_tuple(id)
        .ok_or_else(|| anyhow!("tensor {what} is a {}, expected a tuple", p.describe(id)))?;
    items.iter().map(|&i| usize_arg(p, i, what)).collect()
}

/// Recognises the calls torch uses to pickle a tensor or parameter. `Ok(None)` when `id` is not a
/// tensor at all; an error when it is one but malformed.
pub fn tensor_ref(p: &Pickle, id: ObjId) -> Result<Option<TensorRef>> {
    tensor_ref_depth(p, id, 0)
}

fn tensor_ref_depth(p: &Pickle, id: ObjId, depth: usize) -> Result<Option<TensorRef>> {
    // Wrappers nest at most a few levels; a deeper chain means a cyclic or hostile pickle.
    if depth > 8 {
        bail!("tensor wrappers nested too deeply");
    }
    let Obj::Call { args, .. } = p.get(id) else {
        return Ok(None);
    };
    let Some((module, name)) = p.class_of(id) else {
        return Ok(None);
    };
    let args = p.as_tuple(*args).unwrap_or(&[]);
    let arg = |i: usize| -> Result<ObjId> {
        args.get(i).copied().ok_or_else(|| {
            anyhow!(
                "{module}.{name} call has {} arguments, expected at least {}",
                args.len(),
                i + 1
            )
        })
    };
    match (module, name) {
        // Parameter(data, requires_grad, hooks[, state]): the tensor is the first argument.
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            tensor_ref_depth(p, arg(0)?, depth + 1)
        }
        // Tensor subclasses: _rebuild_from_type_v2(func, type, args, state) calls func(*args).
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let inner_args = arg(2)?;
            let func = arg(0)?;
            match p.class_of(func) {
                Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor")) => {
                    let inner = p.as_tuple(inner_args).ok_or_else(|| {
                        anyhow!("_rebuild_from_type_v2 arguments are not a tuple")
                    })?;
                    rebuild_tensor(p, inner).map(Some)
                }
                _ => Ok(None),
            }
        }
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            rebuild_tensor(p, args).map(Some)
        }
        _ => Ok(None),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(p: &Pickle, args: &[ObjId]) -> Result<TensorRef> {
    if args.len() < 4 {
        bail!(
            "_rebuild_tensor_v2 has {} arguments, expected at least 4",
            args.len()
        );
    }
    let Obj::PersistentId(pid) = p.get(args[0]) else {
        bail!(
            "tensor storage is a {}, expected a persistent storage reference",
            p.describe(args[0])
        );
    };
    // ('storage', storage_class, key, location, numel)
    let rec = p
        .as_tuple(*pid)
        .filter(|r| r.len() >= 5 && p.as_str(r[0]) == Some("storage"))
        .ok_or_else(|| {
            anyhow!(
                "tensor storage reference is not a ('storage', type, key, location, size) record"
            )
        })?;
    let class = p.class_of(rec[1]).map(|(_, n)| n).ok_or_else(|| {
        anyhow!(
            "tensor storage type is a {}, expected a torch storage class",
            p.describe(rec[1])
        )
    })?;
    let dtype = StorageDtype::from_storage_class(class)
        .ok_or_else(|| anyhow!("unsupported tensor storage type `{class}`"))?;
    let storage_key = match p.get(rec[2]) {
        Obj::Str(s) => s.clone(),
        Obj::Int(v) => v.to_string(),
        _ => bail!(
            "tensor storage key is a {}, expected a string",
            p.describe(rec[2])
        ),
    };
    // Keys become archive paths; refuse anything that could escape `data/`.
    if storage_key.is_empty() || storage_key.contains(['/', '\\']) || storage_key.contains("..") {
        bail!("tensor storage key `{storage_key}` is not a plain name");
    }
    let storage_len = usize_arg(p, rec[4], "storage size")?;
    let offset = usize_arg(p, args[1], "storage offset")?;
    let shape = usize_tuple(p, args[2], "size")?;
    let stride = usize_tuple(p, args[3], "stride")?;
    if shape.len() != stride.len() {
        bail!("tensor size {shape:?} and stride {stride:?} have different lengths");
    }
    Ok(TensorRef {
        storage_key,
        dtype,
        storage_len,
        offset,
        shape,
        stride,
    })
}

/// What kind of object a checkpoint's pickle holds.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointKind {
    /// A whole `nn.Module` (`torch.save(model)`), with its class as `module.Name`.
    Module { class: String },
    /// A state dict (`torch.save(model.state_dict())`).
    StateDict,
}

/// The named tensors of a checkpoint (state-dict names: `hidden_layer.weight`, ...), plus the
/// numeric attributes of modules (`bn1.eps`, `hidden_layer.in_features`, ...).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub kind: CheckpointKind,
    /// When the state dict sat under a key of a larger dict (`{"state_dict": ..., "epoch": 3}`).
    pub found_under: Option<String>,
    pub tensors: Vec<(String, TensorRef)>,
    pub attrs: Vec<(String, f64)>,
    /// Module paths and their classes, e.g. `("bn1", "torch.nn.modules.batchnorm.BatchNorm1d")`.
    pub modules: Vec<(String, String)>,
}

impl Checkpoint {
    pub fn attr(&self, name: &str) -> Option<f64> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Keys under which training scripts commonly nest the weights in a checkpoint dict.
const NESTED_KEYS: [&str; 5] = ["state_dict", "model_state_dict", "model", "net", "module"];

/// Flattens a checkpoint pickle into named tensors.
pub fn flatten(p: &Pickle) -> Result<Checkpoint> {
    flatten_at(p, p.root(), 0)
}

fn flatten_at(p: &Pickle, id: ObjId, depth: usize) -> Result<Checkpoint> {
    if depth > 4 {
        bail!("checkpoint dictionaries are nested too deeply");
    }
    if let Some(class) = module_class(p, id) {
        let mut ck = Checkpoint {
            kind: CheckpointKind::Module { class },
            found_under: None,
            tensors: Vec::new(),
            attrs: Vec::new(),
            modules: Vec::new(),
        };
        walk_module(p, id, "", 0, &mut ck)?;
        return Ok(ck);
    }
    let Some(entries) = p.as_mapping(id) else {
        bail!(
            "the pickle holds a {}, not a PyTorch module or state dict",
            p.describe(id)
        );
    };
    let mut tensors = Vec::new();
    for &(k, v) in entries {
        if let Some(t) = tensor_ref(p, v)? {
            let name = p.as_str(k).ok_or_else(|| {
                anyhow!("state dict key is a {}, expected a string", p.describe(k))
            })?;
            tensors.push((name.to_owned(), t));
        }
    }
    if !tensors.is_empty() {
        return Ok(Checkpoint {
            kind: CheckpointKind::StateDict,
            found_under: None,
            tensors,
            attrs: Vec::new(),
            modules: Vec::new(),
        });
    }
    for key in NESTED_KEYS {
        if let Some(inner) = p.lookup(id, key) {
            let mut ck = flatten_at(p, inner, depth + 1)
                .with_context(|| format!("in the checkpoint's `{key}` entry"))?;
            ck.found_under = Some(match ck.found_under {
                Some(under) => format!("{key}.{under}"),
                None => key.to_owned(),
            });
            return Ok(ck);
        }
    }
    let keys: Vec<String> = entries
        .iter()
        .take(12)
        .map(|(k, _)| {
            p.as_str(*k)
                .map_or_else(|| p.describe(*k), |s| format!("`{s}`"))
        })
        .collect();
    bail!(
        "the pickle holds a dict with no tensors (keys: {}{})",
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(", ")
        },
        if entries.len() > 12 { ", ..." } else { "" }
    )
}

/// `Some(class)` when `id` is an object whose state looks like an `nn.Module`'s `__dict__`.
fn module_class(p: &Pickle, id: ObjId) -> Option<String> {
    let (module, name) = p.class_of(id)?;
    let state = p.state(id)?;
    let looks_like_module = ["_modules", "_parameters", "_buffers"]
        .iter()
        .any(|k| p.lookup(state, k).is_some());
    looks_like_module.then(|| format!("{module}.{name}"))
}

fn walk_module(
    p: &Pickle,
    id: ObjId,
    prefix: &str,
    depth: usize,
    ck: &mut Checkpoint,
) -> Result<()> {
    // Real models nest a handful of levels; this bounds cyclic references.
    if depth > 32 {
        bail!("modules nested more than 32 levels deep at `{prefix}`");
    }
    let Some(state) = p.state(id) else {
        return Ok(());
    };
    let Some(entries) = p.as_mapping(state) else {
        return Ok(());
    };
    for &(k, v) in entries {
        let Some(key) = p.as_str(k) else { continue };
        match key {
            "_parameters" | "_buffers" => {
                let Some(tensors) = p.as_mapping(v) else {
                    continue;
                };
                for &(tk, tv) in tensors {
                    let Some(tname) = p.as_str(tk) else { continue };
                    let full = format!("{prefix}{tname}");
                    // `None` entries are absent parameters (e.g. `bias=False`).
                    if let Some(t) =
                        tensor_ref(p, tv).with_context(|| format!("tensor `{full}`"))?
                    {
                        ck.tensors.push((full, t));
                    }
                }
            }
            "_modules" => {
                let Some(children) = p.as_mapping(v) else {
                    continue;
                };
                for &(ck_key, child) in children {
                    let Some(cname) = p.as_str(ck_key) else {
                        continue;
                    };
                    if matches!(p.get(child), Obj::None) {
                        continue;
                    }
                    let path = format!("{prefix}{cname}");
                    if let Some((m, n)) = p.class_of(child) {
                        ck.modules.push((path.clone(), format!("{m}.{n}")));
                    }
                    walk_module(p, child, &format!("{path}."), depth + 1, ck)?;
                }
            }
            _ => match p.get(v) {
                Obj::Float(f) => ck.attrs.push((format!("{prefix}{key}"), *f)),
                Obj::Int(i) => ck.attrs.push((format!("{prefix}{key}"), *i as f64)),
                Obj::Bool(b) => ck
                    .attrs
                    .push((format!("{prefix}{key}"), f64::from(u8::from(*b)))),
                _ => {}
            },
        }
    }
    Ok(())
}

/// A PyTorch zip checkpoint (`torch.save` since 1.6): `<prefix>/data.pkl` plus one
/// `<prefix>/data/<key>` entry per storage.
pub struct PthArchive<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    path: PathBuf,
    prefix: String,
    big_endian: bool,
    pickle: Pickle,
}

/// Upper bound for `data.pkl`: real ones are kilobytes to a few megabytes.
const MAX_PICKLE_BYTES: u64 = 1 << 30;

impl PthArchive<std::io::BufReader<std::fs::File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open `{}`", path.display()))?;
        Self::new(std::io::BufReader::new(file), path)
    }
}

impl<R: Read + Seek> PthArchive<R> {
    /// `path` is only used in messages.
    pub fn new(reader: R, path: &Path) -> Result<Self> {
        let shown = path.display();
        let mut zip = zip::ZipArchive::new(reader).with_context(|| {
            format!("`{shown}` is not a readable zip archive (truncated or corrupt?)")
        })?;
        let pkl_name = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!("`{shown}` is a zip archive but not a PyTorch checkpoint: it has no `data.pkl` entry")
            })?;
        let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_owned();
        let byteorder = format!("{prefix}byteorder");
        // Archives from before the byteorder record are little-endian.
        let big_endian = zip.file_names().any(|n| n == byteorder)
            && read_entry(&mut zip, &byteorder, 16, path)?.trim_ascii() == b"big";
        let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES, path)?;
        let pickle = Pickle::parse(&pkl)
            .with_context(|| format!("cannot read `{pkl_name}` in `{shown}`"))?;
        Ok(Self {
            zip,
            path: path.to_owned(),
            prefix,
            big_endian,
            pickle,
        })
    }

    pub fn pickle(&self) -> &Pickle {
        &self.pickle
    }

    /// Reads a tensor's elements in row-major order, converted to f32. Integer tensors are refused:
    /// no weight of the models we read is an integer.
    pub fn read_f32(&mut self, t: &TensorRef) -> Result<Vec<f32>> {
        if !t.dtype.is_float() {
            bail!("stored as {}, expected floating point", t.dtype);
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("shape {:?} overflows", t.shape))?;
        // Last storage element the view touches, checked before any read.
        let mut last = t.offset;
        if numel > 0 {
            for (&d, &s) in t.shape.iter().zip(&t.stride) {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|x| last.checked_add(x))
                    .ok_or_else(|| {
                        anyhow!("shape {:?} with stride {:?} overflows", t.shape, t.stride)
                    })?;
            }
            if last >= t.storage_len {
                bail!(
                    "view (offset {}, shape {:?}, stride {:?}) reaches past its storage of {} elements",
                    t.offset,
                    t.shape,
                    t.stride,
                    t.storage_len
                );
            }
        }
        let es = t.dtype.size();
        let want = t
            .storage_len
            .checked_mul(es)
            .ok_or_else(|| anyhow!("storage size {} overflows", t.storage_len))?;
        let name = format!("{}data/{}", self.prefix, t.storage_key);
        let bytes = read_entry(&mut self.zip, &name, want as u64, &self.path)?;
        if bytes.len() < want {
            bail!(
                "storage `{name}` in `{}` has {} bytes, expected {want} ({} {} elements): the file is truncated or corrupt",
                self.path.display(),
                bytes.len(),
                t.storage_len,
                t.dtype
            );
        }
        let mut out = Vec::with_capacity(numel);
        if numel == 0 {
            return Ok(out);
        }
        let rank = t.shape.len();
        let mut index = vec![0usize; rank];
        loop {
            let pos = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.push(self.element(&bytes[pos * es..(pos + 1) * es], t.dtype));
            // Odometer over the shape, last dimension fastest.
            let mut d = rank;
            loop {
                if d == 0 {
                    return Ok(out);
                }
                d -= 1;
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }

    fn element(&self, b: &[u8], dtype: StorageDtype) -> f32 {
        let mut buf = [0u8; 8];
        buf[..b.len()].copy_from_slice(b);
        if self.big_endian {
            buf[..b.len()].reverse();
        }
        match dtype {
            StorageDtype::F64 => f64::from_le_bytes(buf) as f32,
            StorageDtype::F32 => f32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            StorageDtype::F16 => half::f16::from_le_bytes([buf[0], buf[1]]).to_f32(),
            StorageDtype::BF16 => half::bf16::from_le_bytes([buf[0], buf[1]]).to_f32(),
            // `read_f32` refuses integer storages before getting here.
            _ => f32::NAN,
        }
    }
}

/// Reads a zip entry, at most `limit` bytes (the entry's declared size is not trusted), and checks
/// its CRC-32 when the whole entry was read. (The zip crate checks it only when a read reaches the
/// end of the entry, which reading exactly `limit` bytes never does: a flipped byte in a tensor
/// went unnoticed.) `path` is the archive, for messages.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let entry = zip
        .by_name(name)
        .map_err(|e| anyhow!("`{}`: no readable zip entry `{name}`: {e}", path.display()))?;
    let (size, stored_crc) = (entry.size(), entry.crc32());
    let mut buf = Vec::with_capacity(size.min(limit) as usize);
    let read = entry.take(limit).read_to_end(&mut buf);
    let corrupt = |what: String| {
        anyhow!(
            "`{}`: zip entry `{name}` {what}: the file is corrupt (bit rot, an interrupted or bad \
             copy); copy or download it again",
            path.display()
        )
    };
    match read {
        Ok(_) => {}
        // The zip crate's own check: invalid data reported once the whole entry was read is its
        // CRC-32 comparison (a decompression error stops before the end).
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData && buf.len() as u64 == size => {
            return Err(corrupt(format!(
                "fails its CRC-32 check (stored {stored_crc:08x})"
            )))
        }
        Err(e) => return Err(corrupt(format!("cannot be read ({e})"))),
    }
    if buf.len() as u64 == size {
        let crc = crc32fast::hash(&buf);
        if crc != stored_crc {
            return Err(corrupt(format!(
                "fails its CRC-32 check (stored {stored_crc:08x}, computed {crc:08x})"
            )));
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_shares_objects_mutated_after_put() {
        // EMPTY_DICT, BINPUT 0, MARK, 'a', 1, SETITEMS, POP, BINGET 0, STOP
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u0h\x00.";
        let p = Pickle::parse(data).unwrap();
        let a = p.lookup(p.root(), "a").unwrap();
        assert_eq!(p.as_int(a), Some(1));
    }

    #[test]
    fn corrupt_pickles_are_errors() {
        for data in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02h\x05.",
            b"\x80\x02u.",
            b"\x80\x02K\x01K\x02s.",
            b"\xfe",
            b"\x80\x02\x87.",
            b"\x80\x02(.",
        ] {
            assert!(Pickle::parse(data).is_err(), "{data:?}");
        }
    }

    #[test]
    fn long1_sign_extends() {
        let p = Pickle::parse(b"\x8a\x01\xff.").unwrap();
        assert_eq!(p.as_int(p.root()), Some(-1));
        let p = Pickle::parse(b"\x8a\x02\xff\x00.").unwrap();
        assert_eq!(p.as_int(p.root()), Some(255));
    }
}

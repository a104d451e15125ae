//! Reading a live CPython's objects from outside, read-only (`process_vm_readv`): the modules
//! table, dicts, instance attributes, lists, sets and strings. What an integration needs to
//! read an application's own state (a web framework's routing table, say) without running code
//! in the target.
//!
//! Layouts for 3.11 to 3.13 (x86_64), from each version's headers and checked with their DWARF
//! (`ptype /o`): the dict keys object is the same in all three; where an instance keeps its
//! attributes is not (3.11: a values pointer and a dict pointer before the object; 3.12: one
//! tagged pointer; 3.13: the values inline after the object). Every pointer followed is checked
//! by the type name of what it points to before it is trusted, and every count is bounded: a
//! wrong guess reads nothing, never garbage, and a racing mutation gives at worst a miss.

use super::{frames, layout, runtime::PythonRuntime};
use crate::target::memory;

/// Entries, items or attributes read from one object at most.
const MAX_ITEMS: u64 = 1 << 16;

/// Reads one [`PythonObjects`] makes at most: whatever the target's memory holds (garbage, a
/// cycle), walking it stays bounded (~0.1 s of system calls).
const READ_BUDGET: u32 = 100_000;

/// Longest `str` read (what the frame namer reads at most); a longer one is not read at all
/// rather than cut.
const MAX_STR: u64 = 1024;

/// `PyFunctionObject.func_code` (3.11 to 3.13).
const FUNCTION_CODE: u64 = 48;

/// Where a function is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSource {
    pub qualname: std::sync::Arc<str>,
    pub file: std::sync::Arc<str>,
    pub first_line: Option<u32>,
}

/// `Py_TPFLAGS_MANAGED_DICT` (3.11+) and `Py_TPFLAGS_HEAPTYPE`: an instance keeps its attributes
/// where [`PythonObjects::attribute`] looks only when its class has both.
const MANAGED_DICT: u64 = 1 << 4;
const HEAP_TYPE: u64 = 1 << 9;

/// `PyTypeObject.tp_name`, `.tp_basicsize`, `.tp_flags`; `PyModuleObject.md_dict`;
/// `PyListObject.ob_size` / `.ob_item`; `PySetObject.mask` / `.table`; `PyDictObject.ma_keys` /
/// `.ma_values`: the same in every supported version.
const TYPE_NAME: u64 = 24;
const TYPE_BASIC_SIZE: u64 = 32;
const TYPE_FLAGS: u64 = 168;
const MODULE_DICT: u64 = 16;
const VAR_SIZE: u64 = 16;
const LIST_ITEMS: u64 = 24;
const SET_MASK: u64 = 32;
const SET_TABLE: u64 = 40;
const DICT_KEYS: u64 = 32;
const DICT_VALUES: u64 = 40;
/// `PyDictKeysObject`: `dk_log2_index_bytes`, `dk_kind`, `dk_nentries`, and where the indices
/// start.
const KEYS_LOG2_INDEX_BYTES: usize = 9;
const KEYS_KIND: usize = 10;
const KEYS_ENTRIES_COUNT: usize = 24;
const KEYS_INDICES: u64 = 32;
/// `DICT_KEYS_GENERAL`: entries carry their hash (24 bytes); unicode and split keys do not (16).
const KIND_GENERAL: u8 = 0;
/// 3.13's `Py_TPFLAGS_INLINE_VALUES`.
const INLINE_VALUES: u64 = 1 << 2;

/// Where an instance of a plain class keeps its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Managed {
    /// 3.11: `PyDictValues *` at -4 words, `PyDictObject *` at -3.
    ValuesAndDict,
    /// 3.12: one word at -3, the values pointer minus one (odd), else the dict.
    Tagged,
    /// 3.13: the dict (when made) at -3 words, else the values after the object.
    Inline,
}

#[derive(Debug, Clone, Copy)]
struct ObjectLayout {
    /// `_PyRuntime.interpreters.main`, `PyInterpreterState`'s modules dict.
    runtime_main_interpreter: u64,
    interpreter_modules: u64,
    /// `PyHeapTypeObject.ht_cached_keys`: the keys instances of the class share.
    cached_keys: u64,
    managed: Managed,
    /// Where a `PyDictValues`'s pointers start (3.13 puts a small header first).
    values_start: u64,
}

fn layout_for(minor: u32) -> Option<ObjectLayout> {
    let (runtime_main_interpreter, interpreter_modules, cached_keys, managed, values_start) = match minor {
        11 => (48, 888, 872, Managed::ValuesAndDict, 0),
        12 => (48, 944, 880, Managed::Tagged, 0),
        13 => (640, 7656, 880, Managed::Inline, 8),
        _ => return None,
    };
    Some(ObjectLayout { runtime_main_interpreter, interpreter_modules, cached_keys, managed, values_start })
}

/// The objects of one interpreter.
#[derive(Debug)]
pub struct PythonObjects<'r> {
    runtime: &'r PythonRuntime,
    layout: ObjectLayout,
    /// Reads left (see [`READ_BUDGET`]).
    budget: std::cell::Cell<u32>,
}

impl<'r> PythonObjects<'r> {
    /// `None` for a version whose object layout is not known here (3.8 to 3.10).
    pub fn new(runtime: &'r PythonRuntime) -> Option<Self> {
        Some(Self { runtime, layout: layout_for(runtime.version.1)?, budget: std::cell::Cell::new(READ_BUDGET) })
    }

    /// The process read.
    pub fn pid(&self) -> u32 {
        self.runtime.pid
    }

    /// Spends one read of the budget; `None` once it is spent.
    fn spend(&self) -> Option<()> {
        let left = self.budget.get().checked_sub(1)?;
        self.budget.set(left);
        Some(())
    }

    fn word(&self, address: u64) -> Option<u64> {
        self.spend()?;
        memory::read_u64(self.pid(), address)
    }

    fn bytes(&self, address: u64, len: usize) -> Option<Vec<u8>> {
        self.spend()?;
        memory::read_bytes(self.pid(), address, len)
    }

    /// `sys.modules` of the main interpreter.
    pub fn modules(&self) -> Option<u64> {
        let interpreter = self.word(self.runtime.runtime_address + self.layout.runtime_main_interpreter)?;
        let modules = self.word(interpreter + self.layout.interpreter_modules)?;
        (self.type_name(modules)? == "dict").then_some(modules)
    }

    /// The name of `object`'s type (`tp_name`: `dict`, `Flask`, `werkzeug.routing.map.Map`...).
    pub fn type_name(&self, object: u64) -> Option<String> {
        if object == 0 {
            return None;
        }
        let name = self.word(self.word(object + layout::OBJECT_TYPE)? + TYPE_NAME)?;
        self.spend()?;
        let bytes = memory::read_c_string(self.pid(), name, 128)?;
        String::from_utf8(bytes).ok()
    }

    /// The text of a `str`.
    pub fn str(&self, object: u64) -> Option<String> {
        if self.type_name(object)? != "str" || self.word(object + layout::UNICODE_LENGTH)? > MAX_STR {
            return None;
        }
        self.spend()?;
        frames::read_unicode(self.pid(), object, &self.runtime.layout)
    }

    /// A module's namespace (`module.__dict__`).
    pub fn module_dict(&self, module: u64) -> Option<u64> {
        (self.type_name(module)? == "module").then(|| self.word(module + MODULE_DICT))?
    }

    /// The (key, value) object pairs of a dict, in insertion order.
    pub fn dict_items(&self, dict: u64) -> Option<Vec<(u64, u64)>> {
        if self.type_name(dict)? != "dict" {
            return None;
        }
        let keys = self.word(dict + DICT_KEYS)?;
        let values = self.word(dict + DICT_VALUES)?;
        let values = (values != 0).then_some(values + self.layout.values_start);
        self.entries(keys, values)
    }

    /// The value of the `str` key `key` in a dict.
    pub fn dict_get(&self, dict: u64, key: &str) -> Option<u64> {
        self.dict_items(dict)?.into_iter().find(|(k, _)| self.is_str(*k, key)).map(|(_, v)| v)
    }

    /// Whether `object` is the `str` `text`: its length is read first (one read for most
    /// keys of a big dict, such as `sys.modules`), the type and text only when it fits.
    fn is_str(&self, object: u64, text: &str) -> bool {
        let length = self.word(object + layout::UNICODE_LENGTH);
        length == Some(text.len() as u64) && self.str(object).as_deref() == Some(text)
    }

    /// Entries of a keys object, their values from `values` (a split table) or from the entries.
    fn entries(&self, keys: u64, values: Option<u64>) -> Option<Vec<(u64, u64)>> {
        let head = self.bytes(keys, KEYS_INDICES as usize)?;
        let log2_index_bytes = u32::from(head[KEYS_LOG2_INDEX_BYTES]);
        let count = u64::from_ne_bytes(head[KEYS_ENTRIES_COUNT..KEYS_ENTRIES_COUNT + 8].try_into().ok()?);
        if log2_index_bytes > 40 || count > MAX_ITEMS {
            return None;
        }
        let (entry_bytes, key_at) = if head[KEYS_KIND] == KIND_GENERAL { (24, 8) } else { (16, 0) };
        let first = keys + KEYS_INDICES + (1u64 << log2_index_bytes);
        let raw = self.bytes(first, (count * entry_bytes) as usize)?;
        let split_values = match values {
            Some(at) => Some(self.bytes(at, (count * 8) as usize)?),
            None => None,
        };
        let word = |bytes: &[u8], at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
        let pairs = (0..count as usize)
            .map(|i| {
                let entry = i * entry_bytes as usize;
                let key = word(&raw, entry + key_at);
                let value = match &split_values {
                    Some(values) => word(values, i * 8),
                    None => word(&raw, entry + key_at + 8),
                };
                (key, value)
            })
            .filter(|&(key, value)| key != 0 && value != 0)
            .collect();
        Some(pairs)
    }

    /// The instance attribute `name` of `object` (a plain class's instance: no `__slots__`).
    pub fn attribute(&self, object: u64, name: &str) -> Option<u64> {
        let class = self.word(object + layout::OBJECT_TYPE)?;
        // Elsewhere (C types, `__slots__`) the words before the object are not its dict.
        let flags = self.word(class + TYPE_FLAGS)?;
        if flags & (MANAGED_DICT | HEAP_TYPE) != MANAGED_DICT | HEAP_TYPE {
            return None;
        }
        let shared_values = |values: u64| -> Option<u64> {
            let keys = self.word(class + self.layout.cached_keys)?;
            (keys != 0).then_some(())?;
            let pairs = self.entries(keys, Some(values))?;
            pairs.into_iter().find(|(k, _)| self.is_str(*k, name)).map(|(_, v)| v)
        };
        match self.layout.managed {
            Managed::ValuesAndDict => {
                let values = self.word(object.checked_sub(32)?)?;
                if values != 0 {
                    return shared_values(values);
                }
                self.dict_get(self.word(object - 24)?, name)
            }
            Managed::Tagged => {
                let dict_or_values = self.word(object.checked_sub(24)?)?;
                // Stored as `values - 1` (an odd address: values are word-aligned).
                if dict_or_values & 1 == 1 {
                    return shared_values(dict_or_values + 1);
                }
                self.dict_get(dict_or_values, name)
            }
            Managed::Inline => {
                let dict = self.word(object.checked_sub(24)?)?;
                if dict != 0 {
                    return self.dict_get(dict, name);
                }
                if flags & INLINE_VALUES == 0 {
                    return None;
                }
                let values = object + self.word(class + TYPE_BASIC_SIZE)?;
                // `{capacity, size, embedded, valid}`: stale values are not the object's.
                let valid = self.bytes(values, 4)?[3] != 0;
                valid.then(|| shared_values(values + self.layout.values_start))?
            }
        }
    }

    /// Where a Python function is written: its qualified name, file and first line (a
    /// decorated function's first decorator).
    pub fn function_source(&self, function: u64) -> Option<FunctionSource> {
        if self.type_name(function)? != "function" {
            return None;
        }
        let code = self.word(function + FUNCTION_CODE)?;
        self.spend()?;
        let (qualname, file, first_line) =
            frames::code_source(self.pid(), code, &self.runtime.layout, self.runtime.code_type)?;
        Some(FunctionSource { qualname, file, first_line: u32::try_from(first_line).ok() })
    }

    /// Whether `object` is `True`.
    pub fn is_true(&self, object: u64) -> bool {
        // A bool is an int: its size word (3.11) or tag (3.12+) is non-zero for 1.
        self.type_name(object).as_deref() == Some("bool") && self.word(object + VAR_SIZE).is_some_and(|w| w != 0)
    }

    /// The items of a `list`.
    pub fn list_items(&self, list: u64) -> Option<Vec<u64>> {
        if self.type_name(list)? != "list" {
            return None;
        }
        let size = self.word(list + VAR_SIZE)?;
        if size > MAX_ITEMS {
            return None;
        }
        let items = self.word(list + LIST_ITEMS)?;
        let raw = self.bytes(items, size as usize * 8)?;
        Some(raw.chunks_exact(8).map(|w| u64::from_ne_bytes(w.try_into().unwrap())).collect())
    }

    /// The items of a `set` or `frozenset`.
    pub fn set_items(&self, set: u64) -> Option<Vec<u64>> {
        if !matches!(self.type_name(set)?.as_str(), "set" | "frozenset") {
            return None;
        }
        let mask = self.word(set + SET_MASK)?;
        if mask >= MAX_ITEMS {
            return None;
        }
        let table = self.word(set + SET_TABLE)?;
        // `setentry` is {key, hash}; empty slots hold NULL, deleted ones a dummy key (no caller's
        // type: they read the items as `str`s).
        let raw = self.bytes(table, (mask as usize + 1) * 16)?;
        Some(raw.chunks_exact(16).map(|e| u64::from_ne_bytes(e[..8].try_into().unwrap())).filter(|&k| k != 0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddtrace_tests::target_app::{pyenv_python, ScriptChild};

    /// Objects of a live interpreter, read from outside, against what the program says.
    fn reads_a_live_interpreter(minor: u32) {
        let script = r#"
import sys
class Box:
    def __init__(self):
        self.rule = "/users/<int:uid>"
        self.methods = {"GET", "HEAD"}
        self.items = ["a", "b", "ccc"]
box = Box()
late = Box()
late.__dict__["extra"] = "made the dict"
def helper():
    pass
print("ready", id(box), id(late), flush=True)
sys.stdin.readline()
"#;
        let child = ScriptChild::run(&pyenv_python(minor), script);
        let words: Vec<u64> = child.ready_line().split_whitespace().skip(1).map(|w| w.parse().unwrap()).collect();
        let runtime = PythonRuntime::find(child.pid()).unwrap().expect("an interpreter");
        let objects = PythonObjects::new(&runtime).expect("a known layout");

        let modules = objects.modules().expect("sys.modules");
        let main = objects.dict_get(modules, "__main__").expect("__main__ in sys.modules");
        let globals = objects.module_dict(main).expect("__main__'s namespace");
        assert_eq!(objects.dict_get(globals, "box"), Some(words[0]));
        assert_eq!(objects.type_name(words[0]).as_deref(), Some("Box"));

        for object in [words[0], words[1]] {
            let rule = objects.attribute(object, "rule").expect("an instance attribute");
            assert_eq!(objects.str(rule).as_deref(), Some("/users/<int:uid>"));
            let methods = objects.set_items(objects.attribute(object, "methods").unwrap()).unwrap();
            let mut methods: Vec<String> = methods.into_iter().filter_map(|m| objects.str(m)).collect();
            methods.sort();
            assert_eq!(methods, ["GET", "HEAD"]);
            let items = objects.list_items(objects.attribute(object, "items").unwrap()).unwrap();
            let items: Vec<String> = items.into_iter().filter_map(|i| objects.str(i)).collect();
            assert_eq!(items, ["a", "b", "ccc"]);
            assert_eq!(objects.attribute(object, "absent"), None);
        }
        assert_eq!(objects.attribute(words[1], "extra").and_then(|e| objects.str(e)).as_deref(), Some("made the dict"));
        let init = objects.dict_get(globals, "helper").and_then(|f| objects.function_source(f)).expect("a function");
        assert_eq!((&*init.qualname, &*init.file, init.first_line), ("helper", "<string>", Some(11)));
        // A non-object address is nothing, not garbage.
        assert_eq!(objects.dict_items(words[0]), None);
        assert_eq!(objects.list_items(modules), None);
    }

    #[test]
    fn reads_a_live_3_11() {
        reads_a_live_interpreter(11);
    }

    #[test]
    fn reads_a_live_3_12() {
        reads_a_live_interpreter(12);
    }

    #[test]
    fn reads_a_live_3_13() {
        reads_a_live_interpreter(13);
    }
}

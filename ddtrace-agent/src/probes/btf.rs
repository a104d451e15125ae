//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough to find a struct by
//! name and the byte offset and size of one of its members, members of anonymous structs and
//! unions included (`struct sock_common` keeps most of its fields in those).
//!
//! aya-obj parses BTF too, but keeps its type and member accessors crate-private (0.3.0).
//! The format: a header, then a type section (records of 12 bytes plus kind-specific data; type
//! ids count from 1 in order) and a string section, both placed relative to the header's end.

use std::{collections::HashMap, path::Path};

const MAGIC: u16 = 0xeb9f;
const HEADER_BYTES: usize = 24;

/// BTF kinds (`BTF_KIND_*`), those this reader needs to tell apart.
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not BTF (magic {0:#06x}; only little-endian BTF of this machine is read)")]
    BadMagic(u16),
    #[error("BTF truncated: {0}")]
    Truncated(&'static str),
    #[error("unknown BTF type kind {kind} (type id {id})")]
    UnknownKind { kind: u32, id: u32 },
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("{strukt}.{member} is a bit field")]
    BitField { strukt: String, member: String },
}

/// One type record: where its kind-specific data starts, and its fixed fields.
#[derive(Debug, Clone, Copy)]
struct TypeRecord {
    name_offset: u32,
    info: u32,
    /// `size` for INT, STRUCT, UNION, ENUM, FLOAT; the referred type id for PTR, TYPEDEF,
    /// modifiers and the like.
    size_or_type: u32,
    /// Offset of the kind-specific data in `Btf::types`.
    extra: usize,
}

impl TypeRecord {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// A member's place in its struct, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPlace {
    pub offset: u32,
    pub size: u32,
}

/// Parsed BTF: the raw sections and an index of the type records.
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Type id -> record (index 0 is the `void` type).
    records: Vec<TypeRecord>,
    /// Struct name -> type ids, built on the first lookup.
    structs: HashMap<String, Vec<u32>>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path)
            .map_err(|e| BtfError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |at: usize| data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let magic = u16_at(0).ok_or(BtfError::Truncated("header"))?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let header_len = read_u32(data, 4).ok_or(BtfError::Truncated("header"))? as usize;
        if header_len < HEADER_BYTES {
            return Err(BtfError::Truncated("header"));
        }
        let field = |at| read_u32(data, at).map(|v| v as usize).ok_or(BtfError::Truncated("header"));
        let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |offset: usize, len: usize, what| {
            let start = header_len.checked_add(offset).ok_or(BtfError::Truncated(what))?;
            let end = start.checked_add(len).ok_or(BtfError::Truncated(what))?;
            data.get(start..end).map(<[u8]>::to_vec).ok_or(BtfError::Truncated(what))
        };
        let types = section(type_off, type_len, "type section")?;
        let strings = section(str_off, str_len, "string section")?;
        let records = index_types(&types)?;
        Ok(Self { types, strings, records, structs: HashMap::new() })
    }

    /// Byte offset and size of `path`'s last member in struct `name`, following the path through
    /// named members (`"sk"`, or `"a.b"` for a member of a named inner struct). Members of
    /// anonymous structs and unions are found as if they were the struct's own, as C sees them.
    pub fn member(&mut self, name: &str, path: &str) -> Result<MemberPlace, BtfError> {
        let ids = self.struct_ids(name);
        if ids.is_empty() {
            return Err(BtfError::NoStruct(name.to_string()));
        }
        // A name can have several definitions (rare); the first that has the member wins.
        let mut last_error = BtfError::NoMember { strukt: name.to_string(), member: path.to_string() };
        for id in ids {
            match self.member_path(id, name, path) {
                Ok(place) => return Ok(place),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    fn member_path(&self, mut id: u32, name: &str, path: &str) -> Result<MemberPlace, BtfError> {
        let mut offset = 0u32;
        let mut place = None;
        for part in path.split('.') {
            let found = self
                .find_member(id, part, 0)
                .ok_or_else(|| BtfError::NoMember { strukt: name.to_string(), member: path.to_string() })?;
            if found.bitfield {
                return Err(BtfError::BitField { strukt: name.to_string(), member: path.to_string() });
            }
            offset += found.bit_offset / 8;
            id = self.resolve(found.type_id);
            place = Some(MemberPlace { offset, size: self.size_of(found.type_id).unwrap_or(0) });
        }
        place.ok_or_else(|| BtfError::NoMember { strukt: name.to_string(), member: path.to_string() })
    }

    /// Struct type ids named `name` that have members (not forward declarations).
    fn struct_ids(&mut self, name: &str) -> Vec<u32> {
        if self.structs.is_empty() {
            for (id, record) in self.records.iter().enumerate().skip(1) {
                if record.kind() == kind::STRUCT && record.vlen() > 0 {
                    let name = self.string(record.name_offset).to_string();
                    self.structs.entry(name).or_default().push(id as u32);
                }
            }
        }
        self.structs.get(name).cloned().unwrap_or_default()
    }

    /// Member `name` of struct or union `id`, looking inside anonymous members. `depth` bounds
    /// the search (anonymous nesting is a few levels deep in practice).
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<FoundMember> {
        let record = self.records.get(id as usize)?;
        if !matches!(record.kind(), kind::STRUCT | kind::UNION) || depth > 8 {
            return None;
        }
        for index in 0..record.vlen() {
            let at = record.extra + index * 12;
            let (name_offset, type_id, raw_offset) =
                (read_u32(&self.types, at)?, read_u32(&self.types, at + 4)?, read_u32(&self.types, at + 8)?);
            let (bit_offset, bitfield_size) =
                if record.kind_flag() { (raw_offset & 0x00ff_ffff, raw_offset >> 24) } else { (raw_offset, 0) };
            let member_name = self.string(name_offset);
            if member_name == name {
                return Some(FoundMember { type_id, bit_offset, bitfield: bitfield_size != 0 });
            }
            if member_name.is_empty() {
                let inner = self.resolve(type_id);
                if let Some(mut found) = self.find_member(inner, name, depth + 1) {
                    found.bit_offset += bit_offset;
                    return Some(found);
                }
            }
        }
        None
    }

    /// `id` with typedefs and qualifiers looked through.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let Some(record) = self.records.get(id as usize) else { return id };
            match record.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = record.size_or_type
                }
                _ => return id,
            }
        }
        id
    }

    /// Size in bytes of type `id`, when it has one.
    fn size_of(&self, id: u32) -> Option<u32> {
        let id = self.resolve(id);
        let record = self.records.get(id as usize)?;
        match record.kind() {
            kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT => {
                Some(record.size_or_type)
            }
            kind::PTR => Some(8),
            kind::ARRAY => {
                let element = read_u32(&self.types, record.extra)?;
                let count = read_u32(&self.types, record.extra + 8)?;
                self.size_of(element)?.checked_mul(count)
            }
            _ => None,
        }
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }
}

struct FoundMember {
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Walks the type section once, noting where each record starts.
fn index_types(types: &[u8]) -> Result<Vec<TypeRecord>, BtfError> {
    let mut records = vec![TypeRecord { name_offset: 0, info: 0, size_or_type: 0, extra: 0 }];
    let mut at = 0;
    while at < types.len() {
        let field = |n| read_u32(types, at + n).ok_or(BtfError::Truncated("type record"));
        let (name_offset, info, size_or_type) = (field(0)?, field(4)?, field(8)?);
        let record = TypeRecord { name_offset, info, size_or_type, extra: at + 12 };
        let vlen = record.vlen();
        let extra = match record.kind() {
            kind::PTR
            | kind::FWD
            | kind::TYPEDEF
            | kind::VOLATILE
            | kind::CONST
            | kind::RESTRICT
            | kind::FUNC
            | kind::FLOAT
            | kind::TYPE_TAG => 0,
            kind::INT | kind::VAR | kind::DECL_TAG => 4,
            kind::ARRAY => 12,
            kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
            kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
            other => return Err(BtfError::UnknownKind { kind: other, id: records.len() as u32 }),
        };
        at = record.extra + extra;
        if at > types.len() {
            return Err(BtfError::Truncated("type record"));
        }
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs for the tests, record by record.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            offset
        }

        fn record(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32) -> u32 {
            let name = self.name(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for value in [name, info, size_or_type] {
                self.types.extend_from_slice(&value.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.record(name, kind::INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        /// A struct or union; members are (name, type, bit offset, bit field size).
        fn aggregate(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let id = self.record(name, kind, members.len() as u32, kind_flag, size);
            for &(member, type_id, bit_offset, bits) in members {
                let name = self.name(member);
                let offset = if kind_flag { (bits << 24) | bit_offset } else { bit_offset };
                for value in [name, type_id, offset] {
                    self.types.extend_from_slice(&value.to_le_bytes());
                }
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let fields =
                [HEADER_BYTES as u32, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32];
            for value in fields {
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A `sock_common` look-alike: ports and addresses inside anonymous unions of anonymous
    /// structs, a bit field, a typedef'd member, a pointer and an array, plus kinds the reader
    /// must step over.
    fn sock_like() -> Vec<u8> {
        let mut b = Builder::new();
        let u16_t = b.int("unsigned short", 2);
        let u32_t = b.int("unsigned int", 4);
        let u8_t = b.int("unsigned char", 1);
        let be32 = b.record("__be32", kind::TYPEDEF, 0, false, u32_t);
        let const_be32 = b.record("", kind::CONST, 0, false, be32);
        let ports = b.aggregate(kind::STRUCT, "", 4, &[("skc_dport", u16_t, 0, 0), ("skc_num", u16_t, 16, 0)]);
        let port_union = b.aggregate(kind::UNION, "", 4, &[("skc_portpair", u32_t, 0, 0), ("", ports, 0, 0)]);
        let addrs =
            b.aggregate(kind::STRUCT, "", 8, &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", const_be32, 32, 0)]);
        let addr_union = b.aggregate(kind::UNION, "", 8, &[("skc_addrpair", u32_t, 0, 0), ("", addrs, 0, 0)]);
        let array = b.record("", kind::ARRAY, 0, false, 0);
        for value in [u8_t, u32_t, 16] {
            b.types.extend_from_slice(&value.to_le_bytes());
        }
        // Kinds with trailing data the index must skip correctly.
        let e = b.record("state", kind::ENUM, 2, false, 4);
        for value in [b.name("A"), 0, b.name("B"), 1] {
            b.types.extend_from_slice(&value.to_le_bytes());
        }
        let _ = e;
        b.record("forward", kind::FWD, 0, false, 0);
        let _proto = b.record("", kind::FUNC_PROTO, 1, false, u32_t);
        for value in [0, u32_t] {
            b.types.extend_from_slice(&value.to_le_bytes());
        }
        let common = b.aggregate(
            kind::STRUCT,
            "sock_common",
            48,
            &[
                ("", addr_union, 0, 0),
                ("", port_union, 96, 0),
                ("skc_family", u16_t, 128, 0),
                ("skc_reuse", u8_t, 152, 4),
                ("skc_v6_rcv_saddr", array, 192, 0),
            ],
        );
        let common_ptr = b.record("", kind::PTR, 0, false, common);
        b.aggregate(kind::STRUCT, "socket", 16, &[("state", u32_t, 0, 0), ("sk", common_ptr, 64, 0)]);
        b.aggregate(kind::STRUCT, "outer", 56, &[("pad", u32_t, 0, 0), ("inner", common, 64, 0)]);
        b.build()
    }

    #[test]
    fn finds_members_nested_in_anonymous_structs_and_unions() {
        let mut btf = Btf::parse(&sock_like()).unwrap();
        let place = |btf: &mut Btf, s, m| btf.member(s, m).unwrap();
        assert_eq!(place(&mut btf, "sock_common", "skc_family"), MemberPlace { offset: 16, size: 2 });
        assert_eq!(place(&mut btf, "sock_common", "skc_dport"), MemberPlace { offset: 12, size: 2 });
        assert_eq!(place(&mut btf, "sock_common", "skc_num"), MemberPlace { offset: 14, size: 2 });
        assert_eq!(place(&mut btf, "sock_common", "skc_daddr"), MemberPlace { offset: 0, size: 4 });
        assert_eq!(place(&mut btf, "sock_common", "skc_rcv_saddr"), MemberPlace { offset: 4, size: 4 });
        assert_eq!(place(&mut btf, "sock_common", "skc_v6_rcv_saddr"), MemberPlace { offset: 24, size: 16 });
        assert_eq!(place(&mut btf, "socket", "sk"), MemberPlace { offset: 8, size: 8 });
        assert_eq!(place(&mut btf, "outer", "inner.skc_num"), MemberPlace { offset: 22, size: 2 });
    }

    #[test]
    fn says_what_is_missing() {
        let mut btf = Btf::parse(&sock_like()).unwrap();
        assert_eq!(btf.member("sock", "sk").unwrap_err(), BtfError::NoStruct("sock".into()));
        assert!(matches!(btf.member("socket", "nope"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member("sock_common", "skc_reuse"), Err(BtfError::BitField { .. })));
        assert!(matches!(btf.member("forward", "x"), Err(BtfError::NoStruct(_))), "a declaration has no members");
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert_eq!(Btf::parse(b"\x7fELF").err(), Some(BtfError::BadMagic(0x457f)));
        assert_eq!(Btf::parse(&[0x9f]).err(), Some(BtfError::Truncated("header")));
        let mut blob = sock_like();
        blob.truncate(blob.len() - 40);
        assert!(Btf::parse(&blob).is_err(), "sections past the end");
        let mut unknown = Builder::new();
        unknown.record("x", 31, 0, false, 0);
        assert!(matches!(Btf::parse(&unknown.build()), Err(BtfError::UnknownKind { kind: 31, id: 1 })));
    }

    #[test]
    fn reads_this_kernels_socket_structs() {
        let mut btf = Btf::from_kernel().expect("this kernel publishes BTF at /sys/kernel/btf/vmlinux");
        assert_eq!(btf.member("sock_common", "skc_family").unwrap().size, 2);
        assert_eq!(btf.member("sock_common", "skc_num").unwrap().size, 2);
        assert_eq!(btf.member("sock_common", "skc_v6_rcv_saddr").unwrap().size, 16);
        let saddr = btf.member("sock_common", "skc_rcv_saddr").unwrap();
        let daddr = btf.member("sock_common", "skc_daddr").unwrap();
        assert_eq!((saddr.size, daddr.size, saddr.offset), (4, 4, daddr.offset + 4), "skc_addrpair is daddr, saddr");
        let dport = btf.member("sock_common", "skc_dport").unwrap();
        assert_eq!(
            btf.member("sock_common", "skc_num").unwrap().offset,
            dport.offset + 2,
            "skc_portpair is dport, num"
        );
        assert_eq!(btf.member("task_struct", "files").unwrap().size, 8);
    }
}

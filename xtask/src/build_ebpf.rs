//! `cargo xtask build-ebpf`: builds the kernel-side crate into a BPF object with BTF.

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bootstrap::{self, BootstrapArgs, EbpfToolchain},
    process::{self, step},
    workspace,
};

/// The BPF target; little-endian, which is what `x86_64` and `aarch64` kernels load.
pub const TARGET: &str = "bpfel-unknown-none";

/// The kernel-side package (and binary) name.
const PACKAGE: &str = "ddtrace-ebpf";

/// `cargo xtask build-ebpf` options.
#[derive(Debug, Args)]
pub struct BuildEbpfArgs {
    /// Build with the dev profile (`target/bpfel-unknown-none/debug`) instead of release.
    #[arg(long)]
    pub debug: bool,
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
}

/// Bootstraps the toolchain, then builds the eBPF object; returns its path.
pub fn run(args: &BuildEbpfArgs) -> Result<PathBuf> {
    let toolchain = bootstrap::ensure(&args.bootstrap)?;
    build(&toolchain, !args.debug)
}

/// `cargo +nightly build [--release] --target bpfel-unknown-none -Z build-std=core -p ddtrace-ebpf`.
pub fn build(toolchain: &EbpfToolchain, release: bool) -> Result<PathBuf> {
    let started = Instant::now();
    let mut cmd = toolchain.nightly("cargo");
    cmd.current_dir(workspace::root())
        // debuginfo is what bpf-linker turns into BTF; `--btf` asks it to emit it. Both are needed
        // for CO-RE relocations and for readable verifier logs. Encoded flags reach only the
        // target crates, not build scripts.
        .env("CARGO_ENCODED_RUSTFLAGS", "-C\x1fdebuginfo=2\x1f-C\x1flink-arg=--btf")
        .arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--target", TARGET, "-Z", "build-std=core", "-p", PACKAGE]);
    step("build-ebpf", format!("building: {}", process::describe(&cmd)));
    process::run(&mut cmd)?;

    let profile = if release { "release" } else { "debug" };
    let object = workspace::target_dir().join(TARGET).join(profile).join(PACKAGE);
    let bytes =
        fs::read(&object).with_context(|| format!("the build succeeded but {} is missing", object.display()))?;
    let sections =
        elf_sections(&bytes).with_context(|| format!("{} is not a readable ELF object", object.display()))?;
    let size_of = |name: &str| sections.iter().find(|s| s.name == name).map(|s| s.size);
    let Some(btf) = size_of(".BTF") else {
        bail!(
            "{} has no .BTF section; the loader needs BTF. Check that bpf-linker got `--btf` \
             and that the crate keeps `debug = 2`",
            object.display()
        );
    };
    let programs =
        programs(&bytes, &sections).with_context(|| format!("cannot read the symbol table of {}", object.display()))?;
    step(
        "build-ebpf",
        format!(
            "built {} ({} bytes; .BTF {btf} bytes, .BTF.ext {} bytes) in {:.1?}; programs: {}",
            object.display(),
            bytes.len(),
            size_of(".BTF.ext").unwrap_or(0),
            started.elapsed(),
            if programs.is_empty() { "none".to_owned() } else { programs.join(", ") },
        ),
    );
    Ok(object)
}

/// One ELF section header, reduced to what the build summary reads.
#[derive(Debug)]
struct Section {
    name: String,
    kind: u32,
    flags: u64,
    offset: usize,
    size: u64,
    link: usize,
}

impl Section {
    /// `SHT_SYMTAB`.
    const SYMBOL_TABLE: u32 = 2;

    /// `SHF_EXECINSTR`: the section holds BPF instructions.
    fn is_code(&self) -> bool {
        self.flags & 0x4 != 0
    }

    fn data<'a>(&self, elf: &'a [u8]) -> Result<&'a [u8]> {
        let end = self.offset + usize::try_from(self.size)?;
        elf.get(self.offset..end).with_context(|| format!("section {} is out of bounds", self.name))
    }
}

/// Little-endian reads from an ELF image, failing on truncation instead of panicking.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&self, offset: usize, len: usize) -> Result<&[u8]> {
        self.0.get(offset..offset + len).with_context(|| format!("truncated at offset {offset}"))
    }

    fn u16(&self, offset: usize) -> Result<usize> {
        let b = self.bytes(offset, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]).into())
    }

    fn u32(&self, offset: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(offset, 4)?.try_into()?))
    }

    fn u64(&self, offset: usize) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(offset, 8)?.try_into()?))
    }

    fn offset(&self, offset: usize) -> Result<usize> {
        Ok(usize::try_from(self.u64(offset)?)?)
    }

    /// The NUL-terminated string at `offset` in the string table `table`.
    fn string(table: &[u8], offset: usize) -> Result<String> {
        let bytes =
            table.get(offset..).and_then(|rest| rest.split(|&b| b == 0).next()).context("string out of bounds")?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// Lists the sections of a 64-bit little-endian ELF file (what bpf-linker writes for bpfel).
fn elf_sections(elf: &[u8]) -> Result<Vec<Section>> {
    let read = Reader(elf);
    if read.bytes(0, 6)? != b"\x7fELF\x02\x01" {
        bail!("not a 64-bit little-endian ELF file");
    }
    let table = read.offset(0x28)?;
    let entry_size = read.u16(0x3a)?;
    let count = read.u16(0x3c)?;
    let header = |index: usize| table + index * entry_size;
    let names_at = header(read.u16(0x3e)?);
    let names = read.bytes(read.offset(names_at + 0x18)?, read.offset(names_at + 0x20)?)?;

    (0..count)
        .map(|index| {
            let at = header(index);
            Ok(Section {
                name: Reader::string(names, read.u32(at)? as usize)?,
                kind: read.u32(at + 0x04)?,
                flags: read.u64(at + 0x08)?,
                offset: read.offset(at + 0x18)?,
                size: read.u64(at + 0x20)?,
                link: read.u32(at + 0x28)? as usize,
            })
        })
        .collect()
}

/// The programs in the object, as `name (section)`: global functions in code sections.
fn programs(elf: &[u8], sections: &[Section]) -> Result<Vec<String>> {
    const SYMBOL_SIZE: usize = 24;
    let Some(symtab) = sections.iter().find(|s| s.kind == Section::SYMBOL_TABLE) else {
        return Ok(Vec::new());
    };
    let strings = sections.get(symtab.link).context("symbol table has no string table")?;
    let (symbols, strings) = (Reader(symtab.data(elf)?), strings.data(elf)?);
    let mut programs = Vec::new();
    for at in (SYMBOL_SIZE..symbols.0.len()).step_by(SYMBOL_SIZE) {
        let info = symbols.bytes(at + 4, 1)?[0];
        let (is_function, is_global) = (info & 0xf == 2, info >> 4 == 1);
        let section = sections.get(symbols.u16(at + 6)?);
        // `.text` holds helpers (memcpy, memset) and subprograms, not attachable programs.
        let is_program_section = |s: &&Section| s.is_code() && s.name != ".text";
        if let Some(section) = section.filter(|s| is_function && is_global && is_program_section(s)) {
            let name = Reader::string(strings, symbols.u32(at)? as usize)?;
            programs.push(format!("{name} ({})", section.name));
        }
    }
    Ok(programs)
}

use std::io::IsTerminal;

use clap::Parser;

/// Spans are built on the event thread and freed on the writer thread: glibc's allocator
/// serialises those cross-thread frees on an arena lock (measured: ~10% of the daemon's time in
/// futex waits at 300k spans/s); mimalloc frees them without contention.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ddtrace_agent::{cli::Cli, daemon};

extern "C" {
    fn mi_option_get(option: i32) -> std::ffi::c_long;
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc's option enum (libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: i32 = 15;
/// Its documented defaults, in mimalloc 3 (what libmimalloc-sys builds) and 2: what tells that
/// index 15 is the option we mean.
const MIMALLOC_DEFAULT_PURGE_DELAYS_MS: [std::ffi::c_long; 2] = [1000, 10];

/// How long freed memory stays with the agent while it runs, in ms. Spans are built on the event
/// thread and freed on the writer's: with mimalloc's 1 s, pages the writer emptied were handed
/// back and then faulted in and zeroed again for the next spans (measured with `cargo xtask
/// bench` at 1M spans/s: 30-45% of the agent's CPU in `clear_page_erms`, and a third of the
/// events dropped for want of CPU; at 10 s: 0.4% dropped, 1,048 -> 773 ns per event). Memory a
/// burst took is returned 10 s after it (at the freeing thread's next allocation), and an idle
/// agent's resident size is unchanged.
const RUNNING_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// mimalloc hands memory a thread freed back to the kernel a second later, and only at that
/// thread's next allocation: what start-up frees (the kernel's BTF, parsed to load the programs)
/// stayed resident for good (54 MB of anonymous memory idle). Returning freed memory at once
/// during start-up only (18-22 MB idle): kept afterwards, it costs the event path a page fault
/// and a madvise for every purge (measured: 1,121 -> 1,884 ns of agent CPU per traced call, and
/// events dropped). Once the daemon has attached, freed memory is kept for [`RUNNING_PURGE_DELAY_MS`].
struct StartupPurge {
    /// The purge delay was mimalloc's default (ours to change).
    untouched: bool,
}

impl StartupPurge {
    fn begin() -> Self {
        // SAFETY: plain calls into the allocator's option table, before any thread is started.
        let current = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        // Left alone when someone set it (MIMALLOC_PURGE_DELAY): then it is theirs.
        let untouched = MIMALLOC_DEFAULT_PURGE_DELAYS_MS.contains(&current);
        if untouched {
            // SAFETY: as above.
            unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
        }
        Self { untouched }
    }

    fn end(&self) {
        if self.untouched {
            // SAFETY: the option table is a set of atomics; any thread may write it.
            unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, RUNNING_PURGE_DELAY_MS) };
        }
    }
}

/// No transparent huge pages for the agent: mimalloc asks for them on its arenas, and then every
/// purge split a 2 MiB page and every new allocation after it zeroed a fresh one (measured:
/// about two thirds of the agent's CPU under a Flask app's load in `clear_page_erms`, and its
/// resident memory counted in 2 MiB steps). A daemon of a few tens of MB gains nothing from them.
///
/// Set from a constructor, before anything allocates: done in `main`, it came after the Rust
/// runtime's first allocations, whose arena page was already huge (2 MiB resident for good,
/// measured on an idle agent).
extern "C" fn refuse_huge_pages() {
    // SAFETY: plain prctl on this process; it affects only how its future page faults are served.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Priority 101, the first one programs may use: ahead of the default-priority constructors and
/// of the runtime's first allocation.
#[used]
#[link_section = ".init_array.00101"]
static REFUSE_HUGE_PAGES: extern "C" fn() = refuse_huge_pages;

fn main() -> std::process::ExitCode {
    let startup_purge = StartupPurge::begin();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // libdatadog logs every retry; our own warning says what failed and what to do.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ddtrace_agent=info,libdd_trace_utils=off".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // One thread drives the daemon's loop, its timers and its file descriptors: with the loop on
    // `block_on` beside a worker thread that owned the timers, every drain tick was a round of
    // cross-thread wake-ups (futex, eventfd), about half of the agent's CPU when idle.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ddtrace-agent: error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(cli, || startup_purge.end())) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ddtrace-agent: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

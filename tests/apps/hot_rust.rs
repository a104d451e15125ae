//! A CPU-bound Rust program for the profiler's tests: nearly all its time is spent in
//! `hot_rust::crunch::Mixer<u64>::grind`, whose symbol is mangled (with a hash) in the binary.
//! Usage: hot_rust SECONDS. Prints "ready", waits for a line on stdin, works SECONDS, exits.

mod crunch {
    pub struct Mixer<T> {
        pub state: T,
    }

    impl Mixer<u64> {
        #[inline(never)]
        pub fn grind(&mut self, rounds: u64) -> u64 {
            for i in 0..rounds {
                self.state = (self.state ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
            }
            self.state
        }
    }
}

#[inline(never)]
fn work_for(seconds: f64) -> u64 {
    let start = std::time::Instant::now();
    let mut mixer = crunch::Mixer { state: 1u64 };
    let mut total = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        total = total.wrapping_add(std::hint::black_box(&mut mixer).grind(200_000));
    }
    total
}

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    println!("ready");
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        std::process::exit(1);
    }
    println!("{}", work_for(seconds));
}

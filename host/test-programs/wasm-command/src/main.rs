//! A `wasi:cli` command task for the Wasm executor's tests: the first argument picks what it does.
//!
//! - `hello`: prints its arguments and `GREETING` to stdout, a line to stderr, writes
//!   `out.txt` into its sandbox, exits 0;
//! - `exit N`: exits with code N (WASI 0.2 carries only success or failure: N > 0 reads as 1);
//! - `spin`: loops forever (to be killed);
//! - `oom`: allocates until the memory cap stops it;
//! - `flood`: writes 8 MiB to stdout (the agent keeps only the tail);
//! - `trap`: panics.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("hello") => {
            println!("hello {}", args[2..].join(" "));
            println!("GREETING={}", std::env::var("GREETING").unwrap_or_default());
            eprintln!("to stderr");
            std::fs::write("/out.txt", b"written by the task").expect("write into the sandbox");
        }
        Some("exit") => std::process::exit(args.get(2).and_then(|n| n.parse().ok()).unwrap_or(3)),
        Some("spin") => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Some("oom") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![7u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some("flood") => {
            let line = [b'x'; 1023];
            let mut out = std::io::stdout().lock();
            for i in 0..8192 {
                out.write_all(&line).expect("stdout");
                writeln!(out, "{}", i % 10).expect("stdout");
            }
            writeln!(out, "the end").expect("stdout");
        }
        Some("trap") => panic!("the task panics on purpose"),
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

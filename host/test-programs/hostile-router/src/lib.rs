//! A router that misbehaves on request, to prove the host survives hostile guests. The request
//! path selects the behaviour; any other path routes to endpoint 0.

use shoal_sdk::{Endpoint, Request, Router};

struct Hostile;

#[allow(clippy::empty_loop)]
impl Router for Hostile {
    fn update(_endpoints: Vec<Endpoint>) {}

    fn route(request: &Request) -> Option<u32> {
        match request.path().as_str() {
            // Spin forever: the epoch deadline must interrupt it.
            "/loop" => loop {
                std::hint::black_box(());
            },
            // Allocate until the memory cap stops us.
            "/oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/trap" => panic!("hostile router panics on purpose"),
            "/stack" => Some(recurse(1) as u32),
            // A 16 MiB log line: the host cuts it to 4 KiB.
            "/log-flood" => {
                shoal_sdk::log::warn(&"x".repeat(16 << 20));
                Some(0)
            }
            // 256 KiB to stdout and stderr: discarded by the host. (More only tests the speed of
            // WASI streams against the router's 50 ms deadline.)
            "/print" => {
                let line = "y".repeat(64 << 10);
                eprintln!("{line}");
                for _ in 0..3 {
                    println!("{line}");
                }
                Some(0)
            }
            // A line to stdout and one to stderr, as a router's debugging would: answered at once
            // by the host, also when the call runs on a Tokio worker thread.
            "/hello" => {
                println!("hello from a router");
                eprintln!("and hello to stderr");
                Some(0)
            }
            // Read stdin to its end (it is empty): 0 bytes.
            "/stdin" => {
                let mut line = String::new();
                Some(std::io::stdin().read_line(&mut line).map_or(1, |n| n as u32))
            }
            // A zero sleep is ready at once; a real one is a wait the host refuses to serve.
            "/sleep-zero" => {
                std::thread::sleep(std::time::Duration::ZERO);
                Some(0)
            }
            "/sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Some(0)
            }
            // Capability probes: answer 0 when denied (as they must be), 1 when granted.
            "/fs" => Some(u32::from(std::fs::read_dir("/").is_ok() || std::fs::read("/etc/passwd").is_ok())),
            "/env" => Some(u32::from(std::env::vars().next().is_some())),
            "/net" => Some(u32::from(std::net::TcpStream::connect(request.host().as_str()).is_ok())),
            "/kv" => Some(u32::from(shoal_sdk::kv::set("k", b"v").is_ok())),
            "/out-of-range" => Some(9999),
            _ => Some(0),
        }
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    recurse(n + 1).wrapping_add(pad[3])
}

shoal_sdk::export_router!(Hostile);

//! The `shoal` binary: set up tracing, parse flags, run the command.

// mimalloc rather than glibc's malloc: the gateway's and the API's hot paths allocate and free
// small objects on one Tokio worker and drop them on another, which glibc serialises on its
// arena locks (seen in profiles of the gateway under load; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Tracing first, outside any async runtime: the OTLP exporter's HTTP client must not be
    // created on an async thread.
    let telemetry = shoal_node::init_tracing();
    let cli = shoal_node::cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(shoal_node::cli::run(cli)));
    if let Some(provider) = telemetry {
        let _ = provider.shutdown();
    }
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(shoal_node::cli::exit_code(&err));
    }
}

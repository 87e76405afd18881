//! The `shoal` binary: parse flags, set up tracing, run the command.

// mimalloc rather than glibc's malloc: the gateway's and the API's hot paths allocate and free
// small objects on one Tokio worker and drop them on another, which glibc serialises on its
// arena locks (seen in profiles of the gateway under load; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Flags first (they say how to log), then tracing, both outside any async runtime: the OTLP
    // exporter's HTTP client must not be created on an async thread.
    let cli = shoal_node::cli::parse();
    let format = cli.log_format;
    let telemetry = shoal_node::init_tracing(format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(shoal_node::cli::run(cli)));
    if let Some(provider) = telemetry {
        let _ = provider.shutdown();
    }
    if let Err(err) = result {
        match format {
            shoal_node::LogFormat::Text => eprintln!("error: {err:#}"),
            shoal_node::LogFormat::Json => {
                eprintln!("{}", serde_json::json!({ "level": "ERROR", "fields": { "message": format!("{err:#}") } }));
            }
        }
        std::process::exit(shoal_node::cli::exit_code(&err));
    }
}

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use flowgate::config::MessageFormat;
use flowgate::plugin::{self, Lang};
use flowgate::run::{self, RunOptions};
use flowgate_sdk::HumanDuration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flowgate runs declarative data pipelines, one YAML file each: a source (Kafka,
/// Postgres changes `postgres_cdc`, HTTP, a file, standard input, a generator)
/// through WebAssembly transform plugins and Avro into a sink (Kafka, Postgres,
/// MySQL/MariaDB, SQLite, HTTP, a file, standard output), without losing a
/// record on a crash.
#[derive(Parser)]
#[command(
    name = "flowgate",
    version,
    propagate_version = true,
    after_help = "Examples:\n  flowgate validate pipelines/*.yaml\n  flowgate run pipelines/quickstart.yaml --metrics-addr 127.0.0.1:9090\n  flowgate plugin new --lang rust my-transform\n  flowgate registry serve --listen 127.0.0.1:8081 --store sqlite:registry.db\n  flowgate schema > flowgate.schema.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter, e.g. `info`, `debug`, `flowgate=debug,sqlx=warn`. The
    /// replication library logs at `warn` unless the filter names `pg_walstream`.
    #[arg(long, global = true, env = "FLOWGATE_LOG", default_value = "info")]
    log: String,

    /// Log as human-readable text or as JSON lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines until their sources end. SIGINT or SIGTERM stops reading,
    /// drains records in flight and commits positions; a second signal exits at once.
    Run {
        /// Pipeline files; each runs side by side with the others.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Serve Prometheus `/metrics`, `/health`, `/health/live` and
        /// `/health/ready` on this address, e.g. 127.0.0.1:9090.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
        #[command(flatten)]
        metrics_tls: MetricsTls,
        /// Print a status line this often (0s: never).
        #[arg(long, default_value = "10s", value_name = "DURATION")]
        progress: HumanDuration,
        /// A pipeline whose sink or transform has been retrying this long is
        /// degraded (one whose source is cut off is at once).
        #[arg(long, default_value = "10s", value_name = "DURATION")]
        degraded_after: HumanDuration,
        /// Where sources without a position store of their own (files) keep it.
        #[arg(long, env = "FLOWGATE_STATE_DIR", default_value = run::default_state_dir().as_os_str())]
        state_dir: PathBuf,
        /// How configuration problems are printed.
        #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
        message_format: MessageFormat,
        /// Stop every pipeline when one fails; by default the others go on and
        /// the exit code (1) tells that one failed.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Check pipeline files and report every problem, with its line and column.
    /// Exits with 2 when a file has problems.
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// How problems are printed.
        #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
        message_format: MessageFormat,
        /// Also connect to the services each pipeline names (Kafka brokers):
        /// addresses, credentials and topics are checked too.
        #[arg(long)]
        check: bool,
        /// Where `run` keeps state; with `--check`, the store of an embedded
        /// registry started for the check.
        #[arg(long, env = "FLOWGATE_STATE_DIR", default_value = run::default_state_dir().as_os_str())]
        state_dir: PathBuf,
    },
    /// Ask a running pipeline to read tables again (a `postgres_cdc` source:
    /// an incremental snapshot, in chunks, while it streams).
    Snapshot {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// A table to read again, `schema.table`; repeat for several.
        #[arg(long = "table", required = true, value_name = "TABLE")]
        tables: Vec<String>,
        /// How configuration problems are printed.
        #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
        message_format: MessageFormat,
    },
    /// Print the JSON Schema of pipeline files, for editor completion and checks.
    Schema,
    /// Write and check WebAssembly transform plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Flowgate's Confluent-compatible Schema Registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

/// HTTPS for the metrics address (its status page, `/metrics` and `/health`).
#[derive(clap::Args)]
struct MetricsTls {
    /// Serve the metrics address over HTTPS with this PEM certificate chain
    /// (with --metrics-tls-key).
    #[arg(long, value_name = "FILE", requires = "metrics_tls_key")]
    metrics_tls_cert: Option<PathBuf>,
    /// The PEM private key of --metrics-tls-cert.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    metrics_tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA on the metrics
    /// address (mutual TLS; Prometheus' `tls_config` sends one).
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    metrics_tls_client_ca: Option<PathBuf>,
}

impl MetricsTls {
    fn config(self) -> Option<run::TlsFiles> {
        let client_ca = self.metrics_tls_client_ca;
        self.metrics_tls_cert.zip(self.metrics_tls_key).map(|(cert, key)| run::TlsFiles { cert, key, client_ca })
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
    listen: SocketAddr,
    /// Where schemas are kept: `sqlite:PATH` (created if missing) or `postgres://...`.
    #[arg(long, env = "FLOWGATE_REGISTRY_STORE", default_value = "sqlite:flowgate-registry.db", value_name = "URL")]
    store: String,
    /// Serve Prometheus `/metrics` (requests by method and status) and `/health` on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Users file (`name:role:hash` lines; roles read, write, admin): every
    /// request then needs HTTP basic authentication. Required off loopback.
    #[arg(long, env = "FLOWGATE_REGISTRY_USERS", value_name = "FILE")]
    users: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse every change: registrations, deletes, configuration.
    #[arg(long)]
    read_only: bool,
    /// A host name clients may address the registry by (repeatable), beside
    /// the listening address and, on loopback, `localhost`.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// The longest schema accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    max_schema_bytes: usize,
    /// Record fields, enum symbols and union branches accepted in one schema.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_fields: usize,
    /// Versions one subject may have.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    max_versions: usize,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve the Schema Registry REST API (Avro schemas) until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Print the hash of a password (read from standard input) for a users file.
    HashPassword,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin project that builds as it is, with the contract and the
    /// guest helper for its language.
    New {
        /// Language of the plugin.
        #[arg(long, value_enum)]
        lang: Lang,
        /// Plugin name (lower-case letters, digits, `-`, `_`).
        name: String,
        /// Directory to create (default: the name).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Say whether a component fits the plugin contract and works: runs its
    /// `init` and its `process` on a sample batch with every field a record
    /// can have, and checks the answer; the first problem is shown with its
    /// byte offset.
    Check {
        #[arg(value_name = "FILE.wasm")]
        file: PathBuf,
        /// The plugin's config, as JSON (`{}` when omitted).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
        /// Run it on the lines of this file (one record's value each) instead
        /// of the sample.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
}

fn init_logging(filter: &str, format: LogFormat) {
    // The replication library reports each status update and wake-up at `info`;
    // its warnings and errors are what an operator needs unless asked otherwise.
    let filter =
        if filter.contains("pg_walstream") { filter.to_string() } else { format!("{filter},pg_walstream=warn") };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        flowgate::errln!("invalid --log filter `{filter}` ({e}); using `info`");
        tracing_subscriber::EnvFilter::new("info")
    });
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A closed stderr (`2>&-`, a reader that went away) must cost the logs only:
    // the subscriber's own report of a failed write would go to stderr with
    // `eprintln!`, which panics, and a panic in the signal task leaves SIGINT
    // and SIGTERM unanswered.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(color).log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_writer(move || flowgate::logs::OneLine::stderr(color)).init(),
        // JSON strings escape what they hold.
        LogFormat::Json => builder.with_writer(std::io::stderr).json().init(),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|e| flowgate::errln!("cannot start the runtime: {e}"))
        .ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    match cli.command {
        Command::Validate { files, message_format, check, state_dir } => {
            run::validate(&files, message_format, check.then_some(state_dir.as_path()))
        }
        Command::Snapshot { file, tables, message_format } => run::snapshot(&file, &tables, message_format),
        Command::Plugin(PluginCommand::New { lang, name, dir }) => plugin::new(lang, &name, dir),
        Command::Plugin(PluginCommand::Check { file, config, input }) => {
            plugin::check(&file, config.as_deref(), input.as_deref())
        }
        Command::Schema => {
            flowgate::outln!("{:#}", flowgate::config::editor_schema());
            ExitCode::SUCCESS
        }
        Command::Registry(RegistryCommand::Serve(args)) => {
            let ServeArgs {
                listen,
                store,
                metrics_addr,
                users,
                tls_cert,
                tls_key,
                tls_client_ca,
                read_only,
                allowed_hosts,
                max_schema_bytes,
                max_fields,
                max_versions,
            } = *args;
            let Some(runtime) = runtime() else { return ExitCode::FAILURE };
            let tls = tls_cert.zip(tls_key).map(|(cert, key)| flowgate_avro::config::TlsServeConfig {
                cert,
                key,
                client_ca: tls_client_ca,
            });
            // Its metrics address is served as the registry is.
            let metrics_tls = tls.as_ref().map(|t| run::TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: t.client_ca.clone(),
            });
            let serve =
                flowgate_avro::config::ServeConfig { listen, store: None, users, tls, read_only, allowed_hosts };
            let limits = flowgate::registry::Limits { max_schema_bytes, max_fields, max_versions };
            runtime.block_on(run::serve_registry(&serve, &store, limits, metrics_addr.map(|a| (a, metrics_tls))))
        }
        Command::Registry(RegistryCommand::HashPassword) => {
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() {
                return ExitCode::FAILURE;
            }
            match flowgate::registry::hash_password(password.trim_end_matches(['\n', '\r'])) {
                Ok(hash) => {
                    flowgate::outln!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    flowgate::errln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            files,
            metrics_addr,
            metrics_tls,
            progress,
            degraded_after,
            state_dir,
            message_format,
            fail_fast,
        } => {
            let Some(runtime) = runtime() else { return ExitCode::FAILURE };
            let options = RunOptions {
                fail_fast,
                metrics_addr,
                metrics_tls: metrics_tls.config(),
                progress: Some(progress.0),
                degraded_after: degraded_after.0,
                state_dir,
                message_format,
            };
            let code = runtime.block_on(run::run(&files, options));
            // A blocking read of standard input cannot be cancelled; do not wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

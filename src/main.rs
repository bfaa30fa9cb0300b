//! The `meshgate` command line: `serve`, `migrate`, `admin`.

use clap::{Args, Parser, Subcommand};
use meshgate::{config::Secret, db, Config};
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "Stateless control plane for AI coding worker daemons"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a replica.
    Serve(Box<Config>),
    /// Applies migrations/ and exits.
    Migrate(DbArgs),
    /// Owners, users and API keys.
    Admin {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Simulated daemons: connect, heartbeat, run tasks, answer commands.
    Sim(Box<meshgate::sim::SimArgs>),
    /// Runs a load scenario on loopback and prints one JSON line.
    Bench(Box<meshgate::bench::BenchArgs>),
}

#[derive(Args)]
struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/meshgate",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    database_url: Secret,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Creates the owner and user when missing, and a new API key (printed once).
    CreateKey {
        #[arg(long)]
        email: String,
        #[arg(long)]
        owner_name: Option<String>,
    },
    /// Lists a user's keys (never the keys themselves).
    ListKeys {
        #[arg(long)]
        email: String,
    },
    /// Revokes a key.
    RevokeKey { key_id: Uuid },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Serve(config) => config.worker_threads,
        // The other commands take it from the environment only: `bench`'s
        // pod B (the injector) reads all its pod settings from there.
        _ => match std::env::var("MESHGATE_WORKER_THREADS") {
            Ok(v) => v.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "MESHGATE_WORKER_THREADS must be a whole number (0: one per CPU), not {v:?}"
                )
            })?,
            Err(_) => 0,
        },
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if threads > 0 {
        runtime.worker_threads(threads);
    }
    // The command runs as a task on the workers, not on the main thread
    // that `block_on` parks: work done in that thread's future (the accept
    // loop, the bench injector) would otherwise hop between it and the
    // workers, a thread wake-up each time.
    runtime
        .build()?
        .block_on(async { tokio::spawn(run(cli)).await? })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(config) => {
            init_tracing(config.log_json);
            let listener = meshgate::http::acceptor::bind(config.listen, config.listen_backlog)?;
            meshgate::run(*config, listener).await?;
        }
        Command::Migrate(args) => {
            init_tracing(false);
            let pool = pool(&args).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::Admin { db: args, command } => admin(&pool(&args).await?, command).await?,
        Command::Sim(args) => meshgate::sim::cli(*args).await?,
        Command::Bench(args) => meshgate::bench::cli(*args).await?,
    }
    Ok(())
}

async fn pool(args: &DbArgs) -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(args.database_url.expose())
        .await?)
}

async fn admin(pool: &sqlx::PgPool, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateKey { email, owner_name } => {
            let new = db::accounts::create_key(pool, &email, owner_name.as_deref()).await?;
            eprintln!("owner id: {}", new.owner_id);
            println!("key id: {}", new.key_id);
            println!("{}", new.key);
        }
        AdminCommand::ListKeys { email } => {
            for k in db::accounts::list_keys(pool, &email).await? {
                let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
                };
                println!(
                    "{}  prefix {}  created {}  last used {}  revoked {}",
                    k.id,
                    k.key_prefix,
                    k.created_at.to_rfc3339(),
                    fmt(k.last_used_at),
                    fmt(k.revoked_at)
                );
            }
        }
        AdminCommand::RevokeKey { key_id } => {
            if db::accounts::revoke_key(pool, key_id).await? {
                println!("revoked {key_id}");
            } else {
                anyhow::bail!("no key with id {key_id}");
            }
        }
    }
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,fred=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

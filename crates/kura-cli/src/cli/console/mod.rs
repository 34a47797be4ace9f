//! `kura console`: one party's clean room in its browser, served from its own machine.
//!
//! The console is the command line's client behind a local web page. It listens on loopback
//! only; the page talks to it alone, and it talks to the enclave exactly as `kura upload`,
//! `kura run` and the rest do: it attests before every action, encrypts uploads here, opens
//! sealed results here, and keeps the log head this party saw (the same file the CLI keeps).
//! The key and the plaintext stay on this machine.
//!
//! The page is three embedded files (no toolchain needed). Its API is guarded against other
//! pages in the same browser and against DNS rebinding: every `/api` call needs the per-start
//! token (from the URL's fragment, sent as a bearer header, which no other origin can add
//! without a CORS preflight the console never grants), and every request must name the
//! console's own loopback host.

mod api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kura_client::Client;
use kura_contract::Contract;
use kura_crypto::SecretIdentity;

use super::{Party, storage};
use crate::files;

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    #[command(flatten)]
    party: Party,
    /// The loopback port to serve on (default: any free port; the URL is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Keep the datasets you upload in your own bucket (as `kura upload --storage`).
    #[arg(long, env = "KURA_STORAGE")]
    storage: Option<PathBuf>,
}

/// What a console needs: where the enclave is, the contract file, and whose console it is.
pub(crate) struct Setup {
    pub enclave: String,
    pub contract: PathBuf,
    pub key: SecretIdentity,
    pub certs: Option<kura_client::certs::Certs>,
    pub storage: Option<kura_api::Storage>,
    /// Keep the log head this party saw in `$KURA_HOME`, shared with the CLI (the demo's
    /// throwaway parties keep it in memory only).
    pub persist_heads: bool,
}

/// A console serving on loopback.
pub(crate) struct Running {
    /// The address to open, with the token in its fragment.
    pub url: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Serves until the task ends (it does not by itself) or fails.
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("the console stopped")??;
        Ok(())
    }
}

pub async fn run(a: ConsoleArgs) -> Result<ExitCode> {
    let p = a.party.resolved()?;
    let setup = Setup {
        enclave: p
            .enclave
            .with_context(|| super::missing("enclave", "KURA_ENCLAVE"))?,
        contract: p
            .contract
            .with_context(|| super::missing("contract", "KURA_CONTRACT"))?,
        key: files::read_identity(&p.key.with_context(|| super::missing("key", "KURA_KEY"))?)?,
        certs: Some(files::cert_store(a.party.fetch)?),
        storage: storage(a.storage.as_deref())?,
        persist_heads: true,
    };
    let running = start(setup, a.port).await?;
    eprintln!("kura console: open this address in your browser (it holds the access token):");
    println!("{}", running.url);
    eprintln!("it listens on 127.0.0.1 only; Ctrl-C stops it");
    tokio::select! {
        served = running.wait() => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The upload under way, for the page's progress bar: plaintext bytes encrypted and sent.
#[derive(Default)]
struct Progress {
    active: AtomicBool,
    done: Arc<AtomicU64>,
    total: AtomicU64,
}

struct Console {
    contract_path: PathBuf,
    /// The contract as read, signed by all or not.
    contract: Contract,
    /// The client, when every party signed; otherwise why not.
    client: Result<tokio::sync::Mutex<Client>, String>,
    party: String,
    enclave: String,
    persist_heads: bool,
    token: String,
    /// The `Host` values a request may carry: this console's loopback address only.
    hosts: [String; 2],
    progress: Progress,
    /// Whether the simulated platform's warning was printed.
    warned: AtomicBool,
    /// Where a file from the page waits while it is encrypted and sent (removed after).
    scratch: tempfile::TempDir,
}

/// Starts a console for `setup` on 127.0.0.1:`port` (0: any free port).
pub(crate) async fn start(setup: Setup, port: u16) -> Result<Running> {
    let contract = files::read_contract(&setup.contract)?;
    let party = contract
        .party_by_key(setup.key.public())
        .context("this key belongs to no party of the contract")?
        .name
        .clone();
    let client = match files::read_signed_contract(&setup.contract) {
        Ok(signed) => {
            let mut client = Client::new(&setup.enclave, signed, setup.key)?
                .with_storage(setup.storage)
                .with_known_head(match setup.persist_heads {
                    true => files::load_head(contract.id().as_str(), &party)?,
                    false => None,
                });
            if let Some(certs) = setup.certs {
                client = client.with_certs(certs);
            }
            Ok(tokio::sync::Mutex::new(client))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let mut token = [0u8; 32];
    kura_crypto::random_bytes(&mut token);
    let token = hex::encode(token);
    let console = Arc::new(Console {
        contract_path: setup.contract,
        contract,
        client,
        party,
        enclave: setup.enclave,
        persist_heads: setup.persist_heads,
        token: token.clone(),
        hosts: [
            format!("127.0.0.1:{}", addr.port()),
            format!("localhost:{}", addr.port()),
        ],
        progress: Progress::default(),
        warned: AtomicBool::new(false),
        // The plaintext of an upload waits here: its owner's alone (0700), whatever the umask.
        scratch: {
            let mut builder = tempfile::Builder::new();
            builder.prefix("kura-console-");
            #[cfg(unix)]
            builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
            builder
                .tempdir()
                .context("cannot create the console's scratch directory")?
        },
    });
    let app = api::routes()
        .merge(assets())
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running {
        url: format!("http://{addr}/#token={token}"),
        task,
    })
}

/// The page: three files compiled into the binary.
fn assets() -> Router<Arc<Console>> {
    fn file(body: &'static str, kind: &'static str) -> axum::routing::MethodRouter<Arc<Console>> {
        axum::routing::get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })
    }
    Router::new()
        .route(
            "/",
            file(
                include_str!("assets/index.html"),
                "text/html; charset=utf-8",
            ),
        )
        .route(
            "/app.js",
            file(
                include_str!("assets/app.js"),
                "text/javascript; charset=utf-8",
            ),
        )
        .route(
            "/style.css",
            file(include_str!("assets/style.css"), "text/css; charset=utf-8"),
        )
}

/// Refuses requests for another host (DNS rebinding) and API calls without the token, and sets
/// the headers that keep the page from loading or sending anything elsewhere.
async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| console.hosts.iter().any(|ok| ok == h)) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "not this console's address",
        )
            .into_response();
    }
    if request.uri().path().starts_with("/api/") {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default();
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), console.token.as_bytes()).into();
        if !same {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": {
                    "reason": "open the console with the address it printed: it carries the access token"
                }})),
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data: blob:; form-action 'none'; base-uri 'none'; \
             frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

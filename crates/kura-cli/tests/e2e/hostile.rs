//! A hostile host: a proxy between the parties and the service that can drop, replay, swap and
//! rewrite any answer, and state directories it rolls back or runs twice. Each attack must be
//! refused by the client with a reason that says what happened, and the honest path must keep
//! working through the same proxy.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use kura_api::routes;
use kura_client::{Client, ClientError};

use crate::common::*;

/// One answer as the service gave it.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    /// The route, without the query string.
    pub(crate) path: String,
    /// What the party sent.
    pub(crate) request: Vec<u8>,
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Sees the genuine answer and every earlier one; returns what the party gets instead, if
/// anything.
type Rewrite = Box<dyn FnMut(&Exchange, &[Exchange]) -> Option<(u16, Vec<u8>)> + Send>;

struct Host {
    upstream: Mutex<String>,
    http: reqwest::Client,
    seen: Mutex<Vec<Exchange>>,
    rewrite: Mutex<Option<Rewrite>>,
}

/// The host's proxy on loopback; stops when dropped.
pub(crate) struct Proxy {
    pub(crate) url: String,
    host: Arc<Host>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub(crate) async fn start(upstream: &str) -> Proxy {
        let host = Arc::new(Host {
            upstream: Mutex::new(upstream.to_string()),
            http: {
                kura_client::install_crypto_provider();
                reqwest::Client::new()
            },
            seen: Mutex::new(Vec::new()),
            rewrite: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(host.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Proxy { url, host, task }
    }

    /// From now on every answer passes through `f`.
    pub(crate) fn rewrite(
        &self,
        f: impl FnMut(&Exchange, &[Exchange]) -> Option<(u16, Vec<u8>)> + Send + 'static,
    ) {
        *self.host.rewrite.lock().unwrap() = Some(Box::new(f));
    }

    pub(crate) fn honest(&self) {
        *self.host.rewrite.lock().unwrap() = None;
    }

    /// Every genuine exchange so far.
    pub(crate) fn seen(&self) -> Vec<Exchange> {
        self.host.seen.lock().unwrap().clone()
    }
}

async fn forward(
    State(host): State<Arc<Host>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let upstream = host.upstream.lock().unwrap().clone();
    let mut out = host
        .http
        .request(parts.method, format!("{upstream}{target}"));
    if let Some(t) = parts.headers.get("content-type") {
        out = out.header("content-type", t.as_bytes());
    }
    let resp = out.body(body.clone()).send().await.unwrap();
    let genuine = Exchange {
        path: parts.uri.path().to_string(),
        request: body.to_vec(),
        status: resp.status().as_u16(),
        body: resp.bytes().await.unwrap().to_vec(),
    };
    let (status, body) = {
        let mut seen = host.seen.lock().unwrap();
        let replaced = host
            .rewrite
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|f| f(&genuine, &seen));
        seen.push(genuine.clone());
        replaced.unwrap_or((genuine.status, genuine.body))
    };
    axum::response::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap()
}

/// The last earlier answer on `path`.
fn last_on(seen: &[Exchange], path: &str) -> Option<(u16, Vec<u8>)> {
    seen.iter()
        .rev()
        .find(|e| e.path == path)
        .map(|e| (e.status, e.body.clone()))
}

const BY_BAND: &str = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
                       ON e.patient_id = a.patient_id GROUP BY a.steps_band";
const BY_AGE: &str = "SELECT e.age_band, COUNT(*) AS people FROM ehr e JOIN activity a \
                      ON e.patient_id = a.patient_id GROUP BY e.age_band";

fn not_mine<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) -> String {
    match r {
        Err(ClientError::NotMine(reason)) => reason,
        other => panic!("{what}: expected the answer refused as not this request's, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_hostile_host_cannot_swap_replay_rewrite_or_forge_an_answer() {
    let room = adhoc_room("").await;
    let proxy = Proxy::start(&room.server.url()).await;
    let client =
        |name: &str| Client::new(&proxy.url, room.contract.clone(), room.key(name)).unwrap();
    let file = |dataset: &str| room.dir.join(format!("{dataset}.csv"));

    // The honest path, through the proxy.
    let mut fitness = client("fitness-b");
    fitness.attest().await.unwrap();
    fitness
        .upload("activity", &file("activity"), |_| {})
        .await
        .unwrap();

    // An old evidence answer replayed, to freeze a party's view at an old head.
    proxy.rewrite(|now, seen| {
        (now.path == routes::EVIDENCE)
            .then(|| seen.iter().find(|e| e.path == routes::EVIDENCE))
            .flatten()
            .map(|e| (e.status, e.body.clone()))
    });
    let mut hospital = client("hospital-a");
    let reason = not_mine(hospital.attest().await.map(|_| ()), "replayed evidence");
    assert!(reason.contains("another request"), "{reason}");
    proxy.honest();
    hospital.attest().await.unwrap();

    // The stream's answer swapped for fitness-b's upload answer: an authentic receipt of
    // another upload (the host may have dropped this one).
    proxy.rewrite(|now, seen| {
        now.path
            .starts_with("/v1/upload/")
            .then(|| {
                last_on(seen, &now.path).or_else(|| {
                    seen.iter()
                        .rev()
                        .find(|e| e.path.starts_with("/v1/upload/"))
                        .map(|e| (e.status, e.body.clone()))
                })
            })
            .flatten()
    });
    not_mine(
        hospital.upload("ehr", &file("ehr"), |_| {}).await,
        "another upload's answer",
    );
    proxy.honest();

    // A refusal written by the host: reported as the host's word, never as the enclave's.
    proxy.rewrite(|now, _| {
        (now.path == routes::CALL).then(|| {
            (
                409,
                br#"{"code":"refused","reason":"refused by rule min-group-size: no"}"#.to_vec(),
            )
        })
    });
    match hospital.query(BY_BAND, None).await {
        Err(ClientError::Unauthenticated {
            status: 409,
            reason,
        }) => {
            assert!(reason.contains("min-group-size"), "{reason}")
        }
        other => panic!("a forged refusal: {other:?}"),
    }
    proxy.honest();

    // Two questions, and the first one's answer given to the second.
    let first = hospital.query(BY_BAND, None).await.unwrap();
    proxy.rewrite(|now, seen| {
        (now.path == routes::CALL)
            .then(|| last_on(seen, routes::CALL))
            .flatten()
    });
    not_mine(hospital.query(BY_AGE, None).await, "another query's answer");
    proxy.honest();

    // An answer edited on the way (the host cannot read it, but it can flip bits).
    proxy.rewrite(|now, _| {
        (now.path == routes::CALL).then(|| {
            let mut body = now.body.clone();
            body[40] ^= 1;
            (now.status, body)
        })
    });
    let reason = not_mine(hospital.query(BY_AGE, None).await, "an edited answer");
    assert!(reason.contains("does not open"), "{reason}");
    proxy.honest();

    // The results of one run given for another: an earlier genuine results answer replayed.
    let second = hospital.query(BY_AGE, None).await.unwrap();
    let tables = hospital.results(Some(&first.run_id)).await.unwrap();
    assert_eq!(tables[0].sql.as_deref(), Some(BY_BAND));
    proxy.rewrite(|now, seen| {
        (now.path == routes::CALL)
            .then(|| last_on(seen, routes::CALL))
            .flatten()
    });
    not_mine(
        hospital.results(Some(&second.run_id)).await,
        "another run's results",
    );
    proxy.honest();

    // The honest path still works, and each table says which question it answers.
    let tables = hospital.results(Some(&second.run_id)).await.unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].run_id, second.run_id);
    assert_eq!(tables[0].sql.as_deref(), Some(BY_AGE));
    assert!(tables[0].request.is_some());
    hospital.audit().await.unwrap();
    // A refusal, through the proxy like everything above.
    let (_, reason) = refused(hospital.query("SELECT e.patient_id FROM ehr e", None).await);
    assert!(reason.contains("identifier"), "{reason}");

    // All the host saw: no name, no SQL, no refusal reason, no status but 200, and sizes that
    // are padding buckets only.
    let seen = proxy.seen();
    assert!(seen.iter().filter(|e| e.path == routes::CALL).count() > 10);
    for e in &seen {
        for needle in [
            "hospital-a",
            "fitness-b",
            "steps_band",
            "age_band",
            "patient_id",
            "SELECT",
            "identifier",
            "refused",
        ] {
            for (what, bytes) in [("request", &e.request), ("answer", &e.body)] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{needle:?} in clear in a {what} on {}",
                    e.path
                );
            }
        }
        if e.path == routes::CALL || e.path.starts_with("/v1/upload/") {
            assert_eq!(e.status, 200, "a status the host can read, on {}", e.path);
            // Plaintext padded to a power of two from 1 KiB, or whole MiB, then a 16-byte tag.
            let padded = e.body.len() - 16;
            assert!(
                (padded >= 1024 && padded.is_power_of_two()) || padded % (1 << 20) == 0,
                "an answer of {} bytes, outside the padding buckets",
                e.body.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_party_whose_upload_is_rolled_back_or_hidden_by_a_copy_notices() {
    let room = room().await;
    let room = room.stop().await;
    let state = room.state();
    let live = start(&room.contract, &state).await;
    let mut hospital = room.client(&live.url(), "hospital-a");
    hospital.attest().await.unwrap();
    // The host copies the state after the party attested and before it uploads (twice), so
    // that the copies extend everything the party saw until its upload.
    let snapshot = |name: &str| {
        let to = room.dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(state.join("log.redb"), to.join("log.redb")).unwrap();
        to
    };
    let (copy, old) = (snapshot("state-copy"), snapshot("state-old"));
    hospital
        .upload("ehr", &room.dir.join("ehr.csv"), |_| {})
        .await
        .unwrap();
    // The upload's receipt moved the party's head past the upload; only that reveals the copies.
    let seen = hospital.known_head().unwrap().clone();
    let caught = |err: ClientError| {
        assert!(
            matches!(&err, ClientError::Log(r) if r.contains("rolled back or forked") || r.contains("rewritten or forked")),
            "{err}"
        )
    };

    // A second live instance from the copy, which never saw the upload.
    let twin = start(&room.contract, &copy).await;
    let mut c = room
        .client(&twin.url(), "hospital-a")
        .with_known_head(Some(seen.clone()));
    caught(c.attest().await.unwrap_err());
    twin.shutdown().await.unwrap();
    live.shutdown().await.unwrap();

    // The state rolled back to the other copy and started again.
    std::fs::copy(old.join("log.redb"), state.join("log.redb")).unwrap();
    let rolled_back = start(&room.contract, &state).await;
    let mut c = room
        .client(&rolled_back.url(), "hospital-a")
        .with_known_head(Some(seen));
    caught(c.attest().await.unwrap_err());
    rolled_back.shutdown().await.unwrap();
}

//! The outbound guard: the only HTTP clients that fetch on a Job's behalf
//! (https inputs, the model API). Every name is resolved here and only the
//! addresses the fleet's policy allows are dialled; a literal IP is judged
//! before the request and every redirect hop is judged again, so neither a
//! DNS answer nor a `Location` header can lead a worker to the metadata
//! server, loopback or the cluster's own ranges. Bodies are read up to a
//! bound, so a hostile server cannot fill a worker's memory or disk.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use drover_crds::PipelineWorkerSpec;
use drover_crds::egress::{AddressPolicy, Cidr, DEFAULT_CLUSTER_CIDRS, Refused, parse_list};
use drover_crds::reach;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;

/// Redirects followed before a fetch gives up.
const MAX_REDIRECTS: usize = 5;

/// The operator's Pod and Service ranges, set once at start (`--cluster-cidrs`).
static CLUSTER: OnceLock<Vec<Cidr>> = OnceLock::new();

/// Records the cluster's ranges for every guard of this process; the first call wins.
pub fn set_cluster_ranges(ranges: Vec<Cidr>) {
    let _ = CLUSTER.set(ranges);
}

/// The cluster's ranges: as set at start, or the operator's defaults.
pub fn cluster_ranges() -> Vec<Cidr> {
    CLUSTER
        .get()
        .cloned()
        .unwrap_or_else(|| parse_list(DEFAULT_CLUSTER_CIDRS).unwrap_or_default())
}

/// The address policy of `fleet` in this cluster.
pub fn policy(fleet: &PipelineWorkerSpec) -> AddressPolicy {
    reach::address_policy(fleet, &cluster_ranges())
}

/// A connection the guard would not make: the name, what it resolved to and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} resolves only to addresses this fleet does not allow ({address} is {refused}); spec.egress.allowedCidrs can allow a range"
)]
pub struct AddressRefused {
    pub host: String,
    pub address: std::net::IpAddr,
    pub refused: Refused,
}

/// A redirect the guard would not follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a redirect {0}")]
pub struct RedirectRefused(pub String);

/// Resolves with the system resolver and keeps only allowed addresses.
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.refuses(addr.ip()) {
                    None => true,
                    Some(refused) => {
                        first_refusal.get_or_insert((addr.ip(), refused));
                        false
                    }
                })
                .collect();
            if allowed.is_empty()
                && let Some((address, refused)) = first_refusal
            {
                return Err(Box::new(AddressRefused {
                    host,
                    address,
                    refused,
                }) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// One client per policy: building one loads the root certificates, not
/// worth repeating per Job, and a fleet's policy rarely changes.
static CLIENTS: Mutex<Vec<(AddressPolicy, reqwest::Client)>> = Mutex::new(Vec::new());

/// A client that connects only where `policy` allows, on every hop.
pub fn client(policy: &AddressPolicy) -> Result<reqwest::Client, String> {
    let mut clients = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, client)) = clients.iter().find(|(p, _)| p == policy) {
        return Ok(client.clone());
    }
    let shared = Arc::new(policy.clone());
    let hops = shared.clone();
    let client = reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: shared.clone(),
        }))
        // A proxy would dial for us, out of the guard's sight.
        .no_proxy()
        .redirect(redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(RedirectRefused(format!(
                    "chain is longer than {MAX_REDIRECTS} hops"
                )));
            }
            let target = attempt.url().to_string();
            if let Some(why) = reach::literal_address_refusal(&target, &hops) {
                return attempt.error(RedirectRefused(format!("to {why}")));
            }
            attempt.follow()
        }))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
    // Only a handful of policies ever exist in one worker.
    if clients.len() >= 8 {
        clients.remove(0);
    }
    clients.push((policy.clone(), client.clone()));
    Ok(client)
}

/// Refuses a URL whose host is an address (or a local name) the policy
/// refuses; the resolver only sees names.
pub fn check_url(url: &str, policy: &AddressPolicy) -> Result<(), String> {
    match reach::literal_address_refusal(url, policy) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// The guard's own refusal somewhere in `error`'s sources, in words.
pub fn refusal_in(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<AddressRefused>() {
            return Some(refused.to_string());
        }
        if let Some(refused) = current.downcast_ref::<RedirectRefused>() {
            return Some(refused.to_string());
        }
        cause = current.source();
    }
    None
}

/// A body larger than its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the answer is larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// Reads `response`'s body, at most `limit` bytes: a `Content-Length`
/// over the bound is refused before anything is read.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Result<Vec<u8>, TooLarge>, reqwest::Error> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Ok(Err(TooLarge { limit }));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Ok(Err(TooLarge { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::routing::get;

    use super::*;

    /// A local server counting its requests: `/ok` answers, `/hop` redirects
    /// to `target`, `/big` sends a megabyte.
    async fn server(target: String) -> (SocketAddr, Arc<AtomicUsize>) {
        server_on("127.0.0.1", target).await
    }

    async fn server_on(ip: &str, target: String) -> (SocketAddr, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/hop",
                get(move || {
                    let target = target.clone();
                    async move {
                        let mut headers = HeaderMap::new();
                        headers.insert(header::LOCATION, target.parse().unwrap());
                        (StatusCode::FOUND, headers)
                    }
                }),
            )
            .route("/big", get(|| async { vec![7u8; 1 << 20] }))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    next.run(req)
                },
            ));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, hits)
    }

    fn guard(allowed: &str) -> AddressPolicy {
        AddressPolicy {
            cluster: parse_list(DEFAULT_CLUSTER_CIDRS).unwrap(),
            allowed: parse_list(allowed).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_never_dialled() {
        let (addr, hits) = server(String::new()).await;
        let client = client(&guard("")).unwrap();
        let error = client
            .get(format!("http://localhost:{}/ok", addr.port()))
            .send()
            .await
            .unwrap_err();
        let why = refusal_in(&error).expect("the guard's refusal");
        assert!(why.contains("loopback"), "{why}");
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_allowed_range_is_dialled() {
        let (addr, hits) = server(String::new()).await;
        let client = client(&guard("127.0.0.1/32")).unwrap();
        let body = client
            .get(format!("http://localhost:{}/ok", addr.port()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "fine");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_redirect_to_the_metadata_server_is_not_followed() {
        let (addr, hits) = server("http://169.254.169.254/computeMetadata/v1/".into()).await;
        let client = client(&guard("127.0.0.1/32")).unwrap();
        let error = client
            .get(format!("http://127.0.0.1:{}/hop", addr.port()))
            .send()
            .await
            .unwrap_err();
        let why = refusal_in(&error).expect("the guard's refusal");
        assert!(why.contains("link-local"), "{why}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "only the first hop");
    }

    #[tokio::test]
    async fn a_redirect_to_a_local_name_is_not_followed() {
        let (inner, inner_hits) = server_on("127.0.0.1", String::new()).await;
        // Loopback answers on all of 127/8: the first hop is the one allowed
        // address, and it sends the client on to a name for another.
        let (outer, _) =
            server_on("127.0.0.2", format!("http://localhost:{}/ok", inner.port())).await;
        let client = client(&guard("127.0.0.2/32")).unwrap();
        let error = client
            .get(format!("http://127.0.0.2:{}/hop", outer.port()))
            .send()
            .await
            .unwrap_err();
        let why = refusal_in(&error).expect("the guard's refusal");
        assert!(
            why.contains("redirect to http://localhost") && why.contains("loopback"),
            "{why}"
        );
        assert_eq!(inner_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_their_bound() {
        let (addr, _) = server(String::new()).await;
        let client = client(&guard("127.0.0.1/32")).unwrap();
        let response = client
            .get(format!("http://127.0.0.1:{}/big", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            read_bounded(response, 1000).await.unwrap(),
            Err(TooLarge { limit: 1000 })
        );
        let response = client
            .get(format!("http://127.0.0.1:{}/big", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            read_bounded(response, 2 << 20)
                .await
                .unwrap()
                .unwrap()
                .len(),
            1 << 20
        );
    }

    #[test]
    fn literal_addresses_are_judged_before_any_request() {
        let why = check_url("https://169.254.169.254/computeMetadata/v1/", &guard("")).unwrap_err();
        assert!(why.contains("metadata server"), "{why}");
        assert_eq!(check_url("https://cdn.example/a.mp3", &guard("")), Ok(()));
    }
}

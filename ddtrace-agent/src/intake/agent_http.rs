//! The HTTP client trace payloads go out with: libdatadog's connector (TCP, or the agent's Unix
//! socket from a `unix://` URL) and hyper's pooled client, with `TCP_NODELAY` on.
//!
//! Why not libdatadog's default client: its TCP connector leaves Nagle's algorithm on. On a
//! kept-alive connection the last partial segment of each payload then waits for the agent's
//! delayed ACK, ~40 ms per request whatever its size: a writer sending 320 KiB payloads was held
//! to ~25 of them per second (8 MB/s), far below what a busy node produces. In-process tracers
//! send a payload a second and never notice; a node agent does.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use libdd_capabilities::{HttpClientCapability, HttpError, MaybeSend, SleepCapability};
use libdd_common::{connector::Connector, http_common::Body};

/// Idle connections are closed by us before the agent's keep-alive would (as libdatadog's
/// periodic client does): reusing one the agent is closing fails the request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AgentHttp {
    client: Client<Connector, Body>,
}

impl AgentHttp {
    /// The client for the agent at `url`: `https://` keeps libdatadog's own connector (TLS,
    /// Nagle's algorithm and all), which a local agent is rarely reached through.
    pub fn for_url(url: &http::Uri) -> Self {
        if url.scheme_str() == Some("https") {
            return Self { client: pooled(Connector::default()) };
        }
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        // libdatadog's connector turns `unix://` URLs into Unix socket connections itself.
        tcp.enforce_http(false);
        Self { client: pooled(Connector::Http(tcp)) }
    }
}

fn pooled(connector: Connector) -> Client<Connector, Body> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(2)
        .build(connector)
}

impl HttpClientCapability for AgentHttp {
    fn new_client() -> Self {
        Self::for_url(&http::Uri::from_static("http://localhost:8126"))
    }

    fn new_periodic() -> Self {
        Self::new_client()
    }

    fn request(
        &self,
        req: http::Request<Bytes>,
    ) -> impl Future<Output = Result<http::Response<Bytes>, HttpError>> + MaybeSend {
        let client = self.client.clone();
        async move {
            let response = client.request(req.map(Body::from_bytes)).await.map_err(|e| HttpError::Network(e.into()))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| HttpError::ResponseBody(e.into()))?.to_bytes();
            Ok(http::Response::from_parts(parts, body))
        }
    }
}

impl SleepCapability for AgentHttp {
    fn new() -> Self {
        Self::new_client()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + MaybeSend {
        tokio::time::sleep(duration)
    }
}

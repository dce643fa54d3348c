//! The connection to the server: `--server` and `--token`, the bearer-token interceptor, and the
//! one table that turns gRPC statuses into messages a user can act on.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use kiln_proto::v1::build_service_client::BuildServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::Failure;

/// Where `kiln server` listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";

/// Builds and project lists can be long; the server's own limit still applies.
const MAX_MESSAGE: usize = 64 << 20;

// No `Debug`: the token is a secret.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The Kiln server's URL (or host:port)
    #[arg(long, env = "KILN_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// Bearer token, when the server has client tokens configured
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = BuildServiceClient<InterceptedService<Channel, BearerToken>>;

/// A connected server: the client, and its address for messages.
pub struct Server {
    client: Client,
    address: String,
}

impl ServerArgs {
    /// The server URL with a scheme (`host:port` means plain HTTP/2).
    fn url(&self) -> String {
        let server = self.server.trim();
        match server.contains("://") {
            true => server.to_string(),
            false => format!("http://{server}"),
        }
    }

    fn bearer(&self) -> Result<BearerToken, Failure> {
        let Some(token) = self.token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(BearerToken(None));
        };
        format!("Bearer {token}")
            .parse::<MetadataValue<Ascii>>()
            .map(|value| BearerToken(Some(value)))
            .map_err(|_| {
                Failure::invalid(
                    "the token (--token or KILN_TOKEN) holds characters a header cannot carry: \
                     use the token exactly as the server's operator issued it",
                )
            })
    }

    pub async fn connect(&self) -> Result<Server, Failure> {
        Server::connect(self.url(), &self.server, self.bearer()?).await
    }
}

impl Server {
    /// A coordinator on loopback without tokens: the one `kiln run` starts in its own process.
    pub async fn local(addr: SocketAddr) -> Result<Server, Failure> {
        let address = format!("http://{addr}");
        Server::connect(address.clone(), &address, BearerToken(None)).await
    }

    /// Connects to `address` (a URL), as the user wrote it in `given`.
    async fn connect(address: String, given: &str, bearer: BearerToken) -> Result<Server, Failure> {
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| {
                Failure::invalid(format!(
                    "invalid server address {given:?}: {e}; use a URL like {DEFAULT_SERVER}"
                ))
            })?
            .connect_timeout(Duration::from_secs(10))
            // Downloads come in frames (and TCP reads) of up to 1 MiB rather than 16 KiB, with
            // room for several in flight.
            .max_frame_size(1 << 20)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20);
        let channel = endpoint.connect().await.map_err(|e| {
            Failure::failed(format!(
                "cannot reach the Kiln server at {address}: {}; start one with `kiln server`, \
                 or point --server (or KILN_SERVER) at a running one",
                causes(&e)
            ))
        })?;
        let client = BuildServiceClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE);
        Ok(Server { client, address })
    }

    /// A handle for one call (cheap: the channel is shared).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// What to tell the user when the server answered a call with an error.
    pub fn refused(&self, status: Status) -> Failure {
        let message = match status.message().trim() {
            "" => status.code().description().to_string(),
            text => text.to_string(),
        };
        match status.code() {
            // Carries `file:line:col: ...` lines: printed as they are.
            Code::InvalidArgument => Failure::invalid(message),
            Code::Unauthenticated => Failure::failed(format!(
                "the server refused the token: pass --token or set KILN_TOKEN ({message})"
            )),
            // The message says what is not allowed and who can change that.
            Code::PermissionDenied => Failure::failed(format!("permission denied: {message}")),
            Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition => {
                Failure::failed(message)
            }
            Code::ResourceExhausted => Failure::failed(format!(
                "over the server's limit: {message}; make the upload or request smaller"
            )),
            Code::Unavailable => Failure::failed(format!(
                "the Kiln server at {} is unavailable: {message}; check that `kiln server` runs \
                 there, or point --server (or KILN_SERVER) at a running one",
                self.address
            )),
            Code::DeadlineExceeded => Failure::failed(format!(
                "the Kiln server at {} did not answer in time: {message}",
                self.address
            )),
            code => Failure::failed(format!("the server answered {code:?}: {message}")),
        }
    }
}

/// Whether a call that failed this way may work when made again: only transient faults (the
/// connection dropped, the server restarted or is overloaded). Everything else is an answer.
pub fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted
    )
}

/// An error with its causes, `a: b: c` (a transport error alone says only "transport error").
fn causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // hyper and tonic often repeat their cause's text in their own.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: &str, token: Option<&str>) -> ServerArgs {
        ServerArgs {
            server: server.to_string(),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn host_and_port_mean_plain_http() {
        assert_eq!(args("10.0.0.1:7420", None).url(), "http://10.0.0.1:7420");
        assert_eq!(args("https://kiln:443", None).url(), "https://kiln:443");
    }

    #[test]
    fn the_token_goes_in_the_authorization_header() {
        let mut bearer = args(DEFAULT_SERVER, Some("s3cret"))
            .bearer()
            .expect("token");
        let request = bearer.call(tonic::Request::new(())).expect("intercepted");
        let value = request.metadata().get("authorization").expect("header");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret"));
        let mut none = args(DEFAULT_SERVER, None).bearer().expect("no token");
        let request = none.call(tonic::Request::new(())).expect("intercepted");
        assert!(request.metadata().get("authorization").is_none());
        assert!(args(DEFAULT_SERVER, Some("a\nb")).bearer().is_err());
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_named_with_the_fix() {
        // Port 1 on loopback: nothing listens there.
        let failure = match args("127.0.0.1:1", None).connect().await {
            Ok(_) => panic!("connected to nothing"),
            Err(f) => f,
        };
        assert_eq!(failure.code, 1);
        assert!(
            failure.message.contains("http://127.0.0.1:1"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("kiln server"),
            "{}",
            failure.message
        );
    }

    #[tokio::test]
    async fn statuses_become_messages_and_exit_codes() {
        let server = Server {
            client: BuildServiceClient::with_interceptor(
                Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
                BearerToken(None),
            ),
            address: "http://127.0.0.1:1".to_string(),
        };
        let invalid = server.refused(Status::invalid_argument("buildspec.yml:3:5: bad"));
        assert_eq!(
            (invalid.code, invalid.message.as_str()),
            (2, "buildspec.yml:3:5: bad")
        );
        let token = server.refused(Status::unauthenticated(""));
        assert!(token
            .message
            .starts_with("the server refused the token: pass --token or set KILN_TOKEN"));
        assert_eq!(token.code, 1);
        let missing = server.refused(Status::not_found("no build x:1"));
        assert_eq!(missing.message, "no build x:1");
        assert!(server
            .refused(Status::unavailable("gone"))
            .message
            .contains("127.0.0.1:1"));
        assert!(retryable(&Status::unavailable("")));
        assert!(!retryable(&Status::not_found("")));
    }
}

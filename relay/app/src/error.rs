//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong in the control plane, and on which side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operator: nothing listens on the control socket (no relay runs there,
    /// or it runs with another `control_socket`).
    #[error("no relay is running at {}: {reason}", path.display())]
    NotRunning {
        /// The control socket.
        path: PathBuf,
        /// What `connect` said: "connection refused", "not found", ...
        reason: String,
    },
    /// Operator: another relay answers on the control socket this one wants.
    #[error(
        "a relay is already running at {} (it answered a connect); stop it or give this one another control_socket",
        path.display()
    )]
    AlreadyRunning {
        /// The control socket.
        path: PathBuf,
    },
    /// Operator: the control socket path is taken by something that is not a
    /// socket; it is never removed automatically.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Internal: a system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file or address.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Relay: no complete reply within the client's timeout.
    #[error("the relay at {} did not answer within {} ms", path.display(), timeout.as_millis())]
    Timeout {
        /// The control socket.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// Relay: the reply is not what the protocol allows (e.g. a CLI and a
    /// relay of different versions).
    #[error("bad reply from the relay: {0}")]
    BadReply(String),
    /// Relay: it understood the request and refused it (`"ok":false`).
    #[error("the relay refused: {0}")]
    Refused(String),
    /// Internal: `serve`/`spawn` called twice on one server.
    #[error("the {0} server is already serving")]
    AlreadyServing(&'static str),
}

impl Error {
    /// An [`Error::Io`] saying what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

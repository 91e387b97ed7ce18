//! The edge's one mapping from a failed request to its answer: which
//! status a client gets for what went wrong on the way to an origin, and
//! what its body says. (The origin's own error answers pass through as the
//! origin wrote them; this is for what the edge itself could not do.)

use pingora::{Error, ErrorSource, ErrorType};

/// The status for `e`; 0 when the client itself went away (nothing to
/// answer).
pub fn status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => 0,
            _ => 500,
        },
    }
}

/// Whether a connection to an origin failed on this machine, before
/// anything reached the origin: no descriptor for a socket (EMFILE,
/// ENFILE) or no local port (EADDRNOTAVAIL), which Pingora reports as an
/// internal error. That is the edge's trouble, not the origin's: it is not
/// counted against the origin, and another origin would meet it too.
pub fn local(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::InternalError | ErrorType::SocketError | ErrorType::BindError)
}

/// The answer to a request whose origin connection failed on this machine
/// (see [`local`]): 503, to come back for shortly.
pub fn out_of_local_resources(id: &str) -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(503),
        format!("out of local resources (descriptors or ports) to reach origin {id}; retry shortly"),
    )
}

/// `e`, a failed connection to origin `id`, told by the origin's id: its
/// own words name the address, which is not the client's to know.
pub fn connect_failed(id: &str, e: Box<Error>) -> Box<Error> {
    let etype = e.etype().clone();
    let context = format!("no connection to origin {id} ({})", etype.as_str());
    Error::because(etype, context, e).into_up()
}

/// The body: what failed, in the words the edge gave the error (origin ids
/// and regions, never an address).
pub fn client_message(e: &Error) -> String {
    format!(
        "modcdn edge: {}\n",
        e.context.as_ref().map_or_else(|| e.etype().as_str().to_string(), |c| c.as_str().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let e = |t: ErrorType, s: ErrorSource| *Error::create(t, s, None, None);
        assert_eq!(status(&e(ErrorType::HTTPStatus(503), ErrorSource::Upstream)), 503);
        assert_eq!(status(&e(ErrorType::ConnectTimedout, ErrorSource::Upstream)), 504);
        assert_eq!(status(&e(ErrorType::ReadTimedout, ErrorSource::Upstream)), 504);
        assert_eq!(status(&e(ErrorType::ConnectRefused, ErrorSource::Upstream)), 502);
        assert_eq!(status(&e(ErrorType::ConnectionClosed, ErrorSource::Downstream)), 0);
        assert_eq!(status(&e(ErrorType::InternalError, ErrorSource::Internal)), 500);
        let explained = Error::explain(ErrorType::HTTPStatus(502), "no healthy origin for example.com/m in region us");
        assert_eq!(client_message(&explained), "modcdn edge: no healthy origin for example.com/m in region us\n");
        let refused = Error::explain(ErrorType::ConnectRefused, "Fail to connect to addr: 10.1.2.3:8081").into_up();
        let told = connect_failed("o1", refused);
        assert_eq!(status(&told), 502);
        assert_eq!(client_message(&told), "modcdn edge: no connection to origin o1 (ConnectRefused)\n");
    }
}

//! Outgoing HTTP through `wasi:http`, filtered per request: only hosts the
//! operator granted are reached; every other request is refused before any
//! connection is made, and the refusal is logged with the host's name.

use std::sync::{Arc, Mutex};

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::context::LogSink;
use crate::grant::{Capability, Grant};

pub(crate) struct Hooks {
    grant: Arc<Grant>,
    log: LogSink,
    denials: Arc<Mutex<Vec<String>>>,
}

impl Hooks {
    pub(crate) fn new(grant: Arc<Grant>, log: LogSink, denials: Arc<Mutex<Vec<String>>>) -> Self {
        Hooks {
            grant,
            log,
            denials,
        }
    }
}

type SendResult = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendResult {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16();
        if let Err(d) = self.grant.check(Capability::Http { host: &host, port }) {
            self.log
                .push(crate::context::Level::Error, format!("[kiln] denied: {d}"));
            self.denials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(d.to_string());
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

//! A `wasi:http` service task for the Wasm executor's tests. It answers every request with
//! `hello from <TASK_ID>: <METHOD> <path>`, except `/spin` (loops forever: the per-request deadline
//! must stop it) and `/trap` (panics: that request fails, the service keeps serving).

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Service;

impl wasip2::exports::http::incoming_handler::Guest for Service {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match path.as_str() {
            "/spin" => loop {
                std::hint::black_box(());
            },
            "/trap" => panic!("the service panics on purpose"),
            _ => {}
        }
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Head => "HEAD".to_owned(),
            Method::Other(other) => other,
            other => format!("{other:?}").to_uppercase(),
        };
        let task = std::env::var("TASK_ID").unwrap_or_default();
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).expect("headers");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("stream");
        write!(out, "hello from {task}: {method} {path}").expect("write");
        out.flush().expect("flush");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish");
    }
}

wasip2::http::proxy::export!(Service);

//! One file per request kind: find the code of a request by its name.

pub mod apply;
pub mod logs;
pub mod remove;
pub mod restart;
pub mod scale;
pub mod start;
pub mod status;
pub mod stop;

use piku_proto::Response;

use crate::supervisor::SupervisorError;

pub fn error(e: SupervisorError) -> Response {
    Response::Error {
        message: e.to_string(),
    }
}

/// Refuses a request naming an app that could not exist (it would become a path).
pub fn refuse_bad_name(app: &str) -> Option<Response> {
    crate::validate::app_name(app)
        .err()
        .map(|message| Response::Error { message })
}

//! `Scale`: change the count of some kinds; the others keep theirs.

use std::collections::BTreeMap;

use piku_proto::Response;

use crate::server::answer;
use crate::supervisor::Supervisor;

/// Answers `Applied`, like an apply: which instances started and stopped.
pub async fn handle(sup: &Supervisor, app: &str, formation: &BTreeMap<String, u32>) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match sup.scale(app, formation).await {
        Ok(report) => Response::Applied(report),
        Err(e) => answer::error(e),
    }
}

//! `Scale`: change the count of some kinds (`ps:scale`); the others keep theirs.

use std::collections::BTreeMap;

use piku_proto::Response;

use crate::app::command::Command;
use crate::registry::Registry;
use crate::server::answer;

/// Answers `Applied`, like an apply: which instances started and stopped. Unknown kinds and
/// counts over the caps are refused by the app's actor, which knows the kinds.
pub async fn handle(apps: &Registry, app: &str, formation: BTreeMap<String, u32>) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match apps
        .request(app, |reply| Command::Scale { formation, reply })
        .await
    {
        Ok(report) => Response::Applied(report),
        Err(e) => answer::error(e),
    }
}

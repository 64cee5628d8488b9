//! `Restart`: fresh processes for an app or one kind, bypassing the crash back-off. With an
//! open front, web instances are renewed blue/green first (`switch.rs`); the other kinds
//! restart once that has succeeded. A stopped app is started.

use piku_proto::Role;

use super::actor::{Actor, AfterSwitch, existing};
use super::command::{AppError, Progress, Reply};
use super::switch::{Renew, Switch};

impl Actor {
    pub(super) async fn restart(
        &mut self,
        kind: Option<String>,
        progress: Progress,
        reply: Reply<()>,
    ) {
        let Some((app, reply)) = existing(&mut self.app, &self.name, reply) else {
            return;
        };
        if let Some(kind) = &kind
            && !app.kinds().contains(kind)
        {
            let _ = reply.send(Err(AppError::UnknownKind {
                app: app.spec.app.clone(),
                kind: kind.clone(),
                known: app.kinds().join(", "),
            }));
            return;
        }
        if app.stopped {
            return self.start_with(progress, reply, |_| ()).await;
        }
        let web_kind = kind.as_ref().is_none_or(|k| {
            app.spec
                .processes
                .iter()
                .any(|p| p.kind == *k && p.role == Role::Web)
        });
        if app.has_front() && web_kind {
            let renew = match &kind {
                Some(kind) => Renew::Kind(kind.clone()),
                None => Renew::All,
            };
            let spec = app.spec.clone();
            match Switch::begin(app, &spec, &renew, &self.ctx) {
                Ok(Some(switch)) => {
                    return self.await_switch(
                        switch,
                        progress,
                        AfterSwitch::Restart { kind, reply },
                    );
                }
                // No web instance runs (scaled to 0): the rest restarts in place.
                Ok(None) => {}
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let pending = app.restart_in_place(kind.as_deref(), false);
        self.answer_after(pending, reply, Ok(()));
    }
}

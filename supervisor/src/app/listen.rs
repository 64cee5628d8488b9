//! An app's front as its actor manages it: opened, rebound or closed to match the spec,
//! told which web instances exist, and the retirement of instances that leave it (drained,
//! then stopped).

use std::time::Duration;

use super::{App, Pending};
use crate::front::{AppFront, FrontError, Listen, Member, backend_id, config_of};
use crate::instance::{Done, InstanceHandle};
use crate::ports::Ports;

impl App {
    /// Whether web instances are replaced blue/green: the app has a front and it is open.
    pub(super) fn has_front(&self) -> bool {
        self.front.is_some()
    }

    /// Opens, rebinds or closes the front to match the spec (closed while stopped); a front
    /// whose timeouts or body limit change is replaced the same way as a rebind. The TCP
    /// port, when the spec does not pin one, is chosen once and kept in `front_port`. On a
    /// bind error the previous front (if any) stays as it was.
    pub(super) async fn ensure_front(&mut self, ports: &Ports) -> Result<(), FrontError> {
        let Some(spec) = self.spec.settings.front.clone() else {
            self.close_front();
            if self.front_port.take().is_some() {
                self.publish_ports(ports);
            }
            return Ok(());
        };
        let wants_chosen_port = spec.tcp.as_ref().is_some_and(|tcp| tcp.port.is_none());
        if wants_chosen_port && self.front_port.is_none() {
            let port = ports
                .allocate(&self.spec.app)
                .map_err(|source| FrontError::Tcp {
                    app: self.spec.app.clone(),
                    addr: "a free port".into(),
                    source,
                })?;
            self.front_port = Some(port);
        } else if !wants_chosen_port && self.front_port.take().is_some() {
            self.publish_ports(ports);
        }
        if self.stopped {
            self.close_front();
            return Ok(());
        }
        let listen = Listen::of(&spec, self.front_port);
        let config = config_of(&spec);
        if self
            .front
            .as_ref()
            .is_some_and(|f| *f.listen() == listen && *f.front().config() == config)
        {
            return Ok(());
        }
        // Listeners that stay are handed over, so a rebind (or new timeouts) refuses no
        // connection.
        let front = AppFront::open(
            &self.spec.app,
            listen,
            config,
            self.members(),
            self.front.as_ref(),
        )
        .await?;
        if let Some(old) = self.front.replace(front) {
            old.close(self.front.as_ref());
        }
        Ok(())
    }

    /// Stops listening (the TCP port stays reserved in `front_port`).
    pub(super) fn close_front(&mut self) {
        if let Some(front) = self.front.take() {
            front.close(None);
        }
    }

    /// Tells the front which web instances exist now (no-op without a front).
    pub(super) fn sync_members(&self) {
        if let Some(front) = &self.front {
            front.set_members(self.members());
        }
    }

    /// The web instances, as the front sees them.
    fn members(&self) -> Vec<Member> {
        self.instances
            .values()
            .filter_map(|h| {
                h.config.launch.port.map(|port| Member {
                    id: h.config.id.clone(),
                    port,
                    state: h.watch(),
                })
            })
            .collect()
    }

    /// Stops web instances that have left the pool: waits until their in-flight requests
    /// are done (at most the app's `drain_ms`), then stops them. The caller has already
    /// removed them from the members.
    pub(super) fn retire(&self, handles: Vec<InstanceHandle>, pending: &mut Pending) {
        let drain = self
            .spec
            .settings
            .front
            .as_ref()
            .map_or(Duration::ZERO, |f| Duration::from_millis(f.drain_ms));
        let front = self.front.as_ref().map(|f| f.front().clone());
        for handle in handles {
            let (tx, done) = Done::channel();
            let front = front.clone();
            pending.done.push(done);
            tokio::spawn(async move {
                if let (Some(front), Some(port)) = (front, handle.config.launch.port) {
                    let id = backend_id(&handle.config.id, port);
                    if !front.drained(&[id], drain).await {
                        handle.sink.note(&format!(
                            "still serving requests after {:.1} s of draining; stopping anyway",
                            drain.as_secs_f64()
                        ));
                    }
                }
                handle.stop().wait().await;
                let _ = tx.send(true);
            });
        }
    }

    /// The front's view for status.
    pub(super) fn front_status(&self) -> Option<piku_proto::FrontStatus> {
        self.front.as_ref().map(AppFront::status)
    }
}

//! Deletion at the contract's deadline, by the service itself.

use std::sync::Arc;

use kura_contract::DeleteAfter;

use super::Service;

impl Service {
    /// Deletes everything at the contract's retention deadline, without anyone asking.
    pub(crate) fn spawn_retention_timer(self: &Arc<Self>) {
        let DeleteAfter::Deadline(deadline) = self.contract.retention.delete_after else {
            return;
        };
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(service) = service.upgrade() else {
                    return;
                };
                // The enclave's clock: a party's later signed time brings the deadline forward.
                let now = service.now().await;
                drop(service);
                if now >= deadline {
                    break;
                }
                let wait = (deadline - now).whole_milliseconds().clamp(1, 1000) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            let Some(service) = service.upgrade() else {
                return;
            };
            let mut state = service.state.lock().await;
            let names: Vec<String> = service
                .contract
                .datasets
                .iter()
                .map(|d| d.name.clone())
                .chain(service.contract.models.iter().map(|m| m.name.clone()))
                .collect();
            for name in names {
                if !state.deleted.contains_key(&name)
                    && let Err(e) = service
                        .delete(&mut state, &name, "retention deadline reached".into())
                        .await
                {
                    tracing::error!(%e, "retention deletion failed");
                }
            }
        });
    }
}

//! Calling an authz plugin: `decide` whether a subject may act on a
//! resource, mirroring [`Runtime::run_post_build`] (fresh `Store`, the
//! call's limits and timeout, traps turned into a [`crate::CallError`]).
//!
//! A failed call decides nothing: the caller must treat it as a denial.
//! This module holds no policy.

use crate::Runtime;
use crate::bindings::authz_types::{Action, Decision, Resource, Subject};
use crate::bindings::types::Config;
use crate::call::{Called, conclude};
use crate::context::CallContext;
use crate::grant::Limits;
use crate::plugin::{Plugin, WorldPre};

impl Runtime {
    /// Whether `subject` (`None`: anonymous) may do `action` on `resource`.
    // The export's four arguments plus the plugin, context and limits every
    // call wrapper takes; a struct for them would only rename the WIT's.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        plugin: &Plugin,
        subject: Option<&Subject>,
        action: Action,
        resource: &Resource,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<Decision> {
        let WorldPre::Authz(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "authz", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let decision = instance
                .call_decide(&mut store, subject, action, resource, config)
                .await?;
            Ok(Ok(decision))
        })
        .await;
        conclude(&plugin.info.name, store, &limits, outcome)
    }
}

//! Calling a forge plugin: verify and parse a webhook, report a status,
//! list repositories and open pull requests, hand out clone credentials. Each call mirrors
//! [`Runtime::run_post_build`]: a fresh `Store` under the call's limits,
//! instantiation and the call inside one wall-clock timeout, traps and
//! exhausted limits turned into a [`CallError`] naming the plugin, stdout and
//! stderr moved into the log, denials appended to the failure.
//!
//! [`CallError`]: crate::CallError
//!
//! This module does not interpret results: mapping a [`WebhookError`] to an
//! HTTP status, storing deliveries and retrying belong to the service.

use crate::Runtime;
use crate::bindings::forge_types::{
    GitCredentials, PullRequest, Repository, StatusReport, WebhookError, WebhookOutcome,
    WebhookRequest,
};
use crate::bindings::types::Config;
use crate::call::{Called, conclude, plugin_error};
use crate::context::CallContext;
use crate::grant::Limits;
use crate::plugin::{Plugin, WorldPre};

impl Runtime {
    /// Verify and parse a webhook. The outer result is the call (a trap, a
    /// limit); the inner one is the plugin's verdict on the request. Kiln's
    /// denials during the call (an ungranted secret) are appended to a
    /// [`WebhookError`]'s message too.
    pub async fn handle_webhook(
        &self,
        plugin: &Plugin,
        request: &WebhookRequest,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<Result<WebhookOutcome, WebhookError>> {
        let WorldPre::Forge(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "forge", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        let denials = store.data().denials.clone();
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let verdict = instance
                .call_handle_webhook(&mut store, request, config)
                .await?;
            Ok(Ok(verdict))
        })
        .await;
        let mut called = conclude(&plugin.info.name, store, &limits, outcome);
        let denials = denials.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Ok(Err(error)) = &mut called.result
            && !denials.is_empty()
        {
            let note = format!(" (denied by Kiln: {})", denials.join("; "));
            match error {
                WebhookError::Unauthenticated(msg) | WebhookError::Malformed(msg) => {
                    msg.push_str(&note)
                }
                WebhookError::RetryAfter(retry) => retry.reason.push_str(&note),
            }
        }
        called
    }

    /// Post a status, check or review. [`crate::CallError::RetryAfter`] when the
    /// forge rate-limits.
    pub async fn report_status(
        &self,
        plugin: &Plugin,
        report: &StatusReport,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<()> {
        let WorldPre::Forge(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "forge", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let reported = instance
                .call_report_status(&mut store, report, config)
                .await?;
            Ok(reported.map_err(plugin_error))
        })
        .await;
        conclude(&plugin.info.name, store, &limits, outcome)
    }

    /// The repositories this forge instance should build.
    pub async fn list_repositories(
        &self,
        plugin: &Plugin,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<Vec<Repository>> {
        let WorldPre::Forge(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "forge", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let listed = instance.call_list_repositories(&mut store, config).await?;
            Ok(listed.map_err(plugin_error))
        })
        .await;
        conclude(&plugin.info.name, store, &limits, outcome)
    }

    /// Credentials to fetch `repository` with `git`.
    pub async fn clone_credentials(
        &self,
        plugin: &Plugin,
        repository: &Repository,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<GitCredentials> {
        let WorldPre::Forge(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "forge", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let credentials = instance
                .call_clone_credentials(&mut store, repository, config)
                .await?;
            Ok(credentials.map_err(plugin_error))
        })
        .await;
        conclude(&plugin.info.name, store, &limits, outcome)
    }

    /// The open pull requests of `repository`.
    pub async fn list_pull_requests(
        &self,
        plugin: &Plugin,
        repository: &Repository,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<Vec<PullRequest>> {
        let WorldPre::Forge(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "forge", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let listed = instance
                .call_list_pull_requests(&mut store, repository, config)
                .await?;
            Ok(listed.map_err(plugin_error))
        })
        .await;
        conclude(&plugin.info.name, store, &limits, outcome)
    }
}

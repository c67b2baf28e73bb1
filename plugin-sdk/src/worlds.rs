//! One trait per world and its export macro. A plugin implements the trait
//! for a unit struct and names it once in the macro:
//! `export_post_build!(MyPlugin);`. The macro adapts the trait to the
//! generated `Guest` trait and emits the component's exports.
//!
//! This module must not hold plugin logic or call the host; it only bridges
//! the author's trait to the generated bindings.

use crate::{
    Action, BuildInfo, Config, Decision, GitCredentials, PluginError, PluginInfo, PullRequest,
    Repository, Resource, StatusReport, StepOutcome, Subject, WebhookError, WebhookOutcome,
    WebhookRequest,
};

/// A plugin that runs on one built job (the `post-build` world).
pub trait PostBuild {
    /// Name, version, world, the capabilities asked for and config keys.
    fn describe() -> PluginInfo;

    /// Runs on one built job. Return [`PluginError::retry_after`] for a
    /// transient failure instead of sleeping.
    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError>;
}

/// A forge integration (the `forge` world).
pub trait Forge {
    /// Name, version, world, the capabilities asked for and config keys.
    fn describe() -> PluginInfo;

    /// Verifies a webhook (before parsing its body) and turns it into
    /// change events, with the forge's delivery id. Return
    /// [`WebhookError::Unauthenticated`] for a missing or wrong signature,
    /// [`WebhookError::Malformed`] for a body that does not parse, and
    /// [`WebhookOutcome::ignored`] for an event that needs no build.
    fn handle_webhook(
        request: WebhookRequest,
        config: Config,
    ) -> Result<WebhookOutcome, WebhookError>;

    /// Reports a status or check on a commit. Return
    /// [`PluginError::retry_after`] when the forge rate-limits.
    fn report_status(report: StatusReport, config: Config) -> Result<(), PluginError>;

    /// Lists the repositories this forge instance should build.
    fn list_repositories(config: Config) -> Result<Vec<Repository>, PluginError>;

    /// Credentials to fetch `repository` with `git`. The default fetches its
    /// `clone_url` anonymously, which serves public repositories.
    fn clone_credentials(
        repository: Repository,
        config: Config,
    ) -> Result<GitCredentials, PluginError> {
        let _ = config;
        Ok(GitCredentials::anonymous(repository.clone_url))
    }

    /// The open pull requests of `repository`, each with action
    /// [`PullRequestAction::Opened`](crate::PullRequestAction::Opened), for
    /// reconciliation. The default says the plugin cannot list them, and
    /// the host then relies on webhooks alone for pull requests.
    fn list_pull_requests(
        repository: Repository,
        config: Config,
    ) -> Result<Vec<PullRequest>, PluginError> {
        let _ = (repository, config);
        Err(PluginError::failed(
            "this forge plugin does not list pull requests",
        ))
    }
}

/// An access policy (the `authz` world).
pub trait Authz {
    /// Name, version, world, the capabilities asked for and config keys.
    fn describe() -> PluginInfo;

    /// Whether `subject` (`None`: anonymous) may do `action` on `resource`.
    fn decide(
        subject: Option<Subject>,
        action: Action,
        resource: Resource,
        config: Config,
    ) -> Decision;
}

/// Exports a type implementing [`PostBuild`] as the component's
/// `post-build` world. Use it once per plugin crate.
#[macro_export]
macro_rules! export_post_build {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __KilnPostBuildExport;

        impl $crate::wit::post_build::Guest for __KilnPostBuildExport {
            fn describe() -> $crate::PluginInfo {
                <$plugin as $crate::PostBuild>::describe()
            }

            fn run(
                build: $crate::BuildInfo,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::StepOutcome, $crate::PluginError> {
                <$plugin as $crate::PostBuild>::run(build, $crate::Config::from(config))
            }
        }

        $crate::wit::post_build::__kiln_export_post_build!(
            __KilnPostBuildExport with_types_in $crate::wit::post_build
        );
    };
}

/// Exports a type implementing [`Forge`] as the component's `forge` world.
#[macro_export]
macro_rules! export_forge {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __KilnForgeExport;

        impl $crate::wit::forge::Guest for __KilnForgeExport {
            fn describe() -> $crate::PluginInfo {
                <$plugin as $crate::Forge>::describe()
            }

            fn handle_webhook(
                request: $crate::WebhookRequest,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::WebhookOutcome, $crate::WebhookError> {
                <$plugin as $crate::Forge>::handle_webhook(request, $crate::Config::from(config))
            }

            fn report_status(
                report: $crate::StatusReport,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<(), $crate::PluginError> {
                <$plugin as $crate::Forge>::report_status(report, $crate::Config::from(config))
            }

            fn list_repositories(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Repository>, $crate::PluginError>
            {
                <$plugin as $crate::Forge>::list_repositories($crate::Config::from(config))
            }

            fn clone_credentials(
                repository: $crate::Repository,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::GitCredentials, $crate::PluginError> {
                <$plugin as $crate::Forge>::clone_credentials(
                    repository,
                    $crate::Config::from(config),
                )
            }

            fn list_pull_requests(
                repository: $crate::Repository,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::PullRequest>, $crate::PluginError>
            {
                <$plugin as $crate::Forge>::list_pull_requests(
                    repository,
                    $crate::Config::from(config),
                )
            }
        }

        $crate::wit::forge::__kiln_export_forge!(
            __KilnForgeExport with_types_in $crate::wit::forge
        );
    };
}

/// Exports a type implementing [`Authz`] as the component's `authz` world.
#[macro_export]
macro_rules! export_authz {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __KilnAuthzExport;

        impl $crate::wit::authz::Guest for __KilnAuthzExport {
            fn describe() -> $crate::PluginInfo {
                <$plugin as $crate::Authz>::describe()
            }

            fn decide(
                subject: ::core::option::Option<$crate::Subject>,
                action: $crate::Action,
                resource: $crate::Resource,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> $crate::Decision {
                <$plugin as $crate::Authz>::decide(
                    subject,
                    action,
                    resource,
                    $crate::Config::from(config),
                )
            }
        }

        $crate::wit::authz::__kiln_export_authz!(
            __KilnAuthzExport with_types_in $crate::wit::authz
        );
    };
}

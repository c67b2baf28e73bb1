//! Placeholder: the plugin_gitea tests land here.

//! Placeholder: the plugin_gerrit tests land here.

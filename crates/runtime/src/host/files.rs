//! `kiln:plugin/files`: one small file written inside a granted directory.
//!
//! The path must be relative, made only of normal components, and may not
//! leave the directory through a symlink. Writes are atomic (temporary file
//! and rename), so a reader never sees half an outputs index.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::bindings::files::Host;
use crate::bindings::types::{HostError, HostErrorKind};
use crate::grant::Capability;

use super::{HostState, host_error};

/// Largest file a plugin may write, bytes.
pub const MAX_FILE: usize = 1 << 20;

impl Host for HostState {
    async fn write_file(
        &mut self,
        directory: String,
        path: String,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(d) = self.ctx.grant.check(Capability::Directory(&directory)) {
            return Ok(Err(self.denied(d)));
        }
        let Some(root) = self.ctx.grant.directories.get(&directory).cloned() else {
            return Ok(Err(host_error(
                HostErrorKind::NotFound,
                format!("directory `{directory}` is not configured"),
            )));
        };
        if contents.len() > MAX_FILE {
            return Ok(Err(host_error(
                HostErrorKind::Invalid,
                format!(
                    "{} bytes is more than the {MAX_FILE}-byte limit of write-file",
                    contents.len()
                ),
            )));
        }
        let result =
            tokio::task::spawn_blocking(move || write_inside(&root, &path, &contents)).await?;
        Ok(result.map_err(|(kind, msg)| host_error(kind, msg)))
    }
}

fn write_inside(root: &Path, rel: &str, contents: &[u8]) -> Result<(), (HostErrorKind, String)> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err((
            HostErrorKind::Invalid,
            format!("`{rel}` must be a relative path without `..`"),
        ));
    }
    let io = |e: std::io::Error| (HostErrorKind::Failed, format!("writing `{rel}`: {e}"));
    std::fs::create_dir_all(root).map_err(io)?;
    let root = root.canonicalize().map_err(io)?;
    let target: PathBuf = root.join(rel_path);
    let parent = target.parent().unwrap_or(&root).to_owned();
    std::fs::create_dir_all(&parent).map_err(io)?;
    let real_parent = parent.canonicalize().map_err(io)?;
    if !real_parent.starts_with(&root) {
        return Err((
            HostErrorKind::Denied,
            format!("`{rel}` leaves the granted directory through a symlink"),
        ));
    }
    let file_name = target
        .file_name()
        .ok_or((HostErrorKind::Invalid, format!("`{rel}` names no file")))?;
    let tmp = real_parent.join(format!(".{}.kiln-tmp", file_name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, real_parent.join(file_name)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_inside_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        write_inside(
            dir.path(),
            "owner/repo/main/x86_64-linux.hello",
            b"/nix/store/x",
        )
        .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("owner/repo/main/x86_64-linux.hello")).unwrap(),
            b"/nix/store/x"
        );
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "./x"] {
            assert!(write_inside(dir.path(), bad, b"").is_err(), "{bad}");
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = write_inside(dir.path(), "link/x", b"").unwrap_err();
        assert_eq!(err.0, HostErrorKind::Denied);
        assert!(!outside.path().join("x").exists());
    }
}

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
    use std::os::unix::fs::OpenOptionsExt;
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
    let mut dir: PathBuf = root.canonicalize().map_err(io)?;
    let file_name = rel_path
        .file_name()
        .ok_or((HostErrorKind::Invalid, format!("`{rel}` names no file")))?;
    // Walk down one component at a time, never through a symlink, creating
    // directories only once the prefix is known to be a real directory.
    if let Some(parent) = rel_path.parent() {
        for part in parent.components() {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err((
                        HostErrorKind::Denied,
                        format!("`{rel}` passes through a symlink"),
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err((
                        HostErrorKind::Invalid,
                        format!("`{}` is not a directory", dir.display()),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir).map_err(io)?
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
    let target = dir.join(file_name);
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err((HostErrorKind::Denied, format!("`{rel}` is a symlink")));
    }
    let tmp = dir.join(format!(
        ".{}.kiln-tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &target).map_err(io)
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
        for through in ["link/x", "link/sub/x"] {
            let err = write_inside(dir.path(), through, b"").unwrap_err();
            assert_eq!(err.0, HostErrorKind::Denied, "{through}");
        }
        assert!(!outside.path().join("x").exists());
        assert!(
            !outside.path().join("sub").exists(),
            "a directory was created outside"
        );
        std::os::unix::fs::symlink(outside.path().join("target"), dir.path().join("file-link"))
            .unwrap();
        assert_eq!(
            write_inside(dir.path(), "file-link", b"x").unwrap_err().0,
            HostErrorKind::Denied
        );
        assert!(!outside.path().join("target").exists());
    }
}

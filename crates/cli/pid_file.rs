//! `serve --pid-file PATH`: the serving process's id in a file, as nginx's
//! `pid` and most daemons write it, for scripts and service managers that
//! find a server by its pid file.
//!
//! Written once the server listens (a process that fails before never
//! names itself), by the supervisor with `--processes` (its worker
//! processes write none); replaced whole, by a rename, so that a reader
//! sees the old id or the new one and never half a file, and a stale file
//! left by a killed process is simply overwritten. Removed when the process
//! exits by returning (a clean stop, or an error after it listened), but only
//! while it still holds this process's id: after an upgrade in place the
//! newer process has written its own, which the old one leaves. A process
//! that is killed, or exits at once on a second signal, leaves it (stale,
//! overwritten at the next start).

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A pid file this process wrote; removed on drop if it still names this
/// process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

/// Checks that `path` can be a pid file before anything listens: its
/// directory exists. (Whether it is writable is found when it is written.)
pub fn check_dir(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(format!("{} names no file", path.display()));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "the pid file's directory {} is not a directory",
            dir.display()
        )),
        Err(e) => Err(format!(
            "the pid file's directory {} cannot be used: {e}",
            dir.display()
        )),
    }
}

impl PidFile {
    /// Writes this process's id to `path` (replacing whatever is there).
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        let pid = std::process::id();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{pid}.tmp"));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(format!("{pid}\n").as_bytes())?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // A newer process (an upgrade in place) named itself since: its file.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>() == Ok(self.pid));
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the pid file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale file is replaced; the file goes when dropped, unless another
    /// process's id replaced ours meanwhile.
    #[test]
    fn written_over_a_stale_one_and_removed_only_while_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("megaconn.pid");
        std::fs::write(&path, "4194304\n").unwrap();
        let file = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(file);
        assert!(!path.exists());
        let file = PidFile::write(&path).unwrap();
        std::fs::write(&path, "4194304\n").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4194304\n");
        // Nothing else is left in the directory (no temporary file).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn its_directory_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_dir(&dir.path().join("a.pid")).is_ok());
        assert!(check_dir(Path::new("relative.pid")).is_ok());
        let err = check_dir(&dir.path().join("missing/a.pid")).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }
}

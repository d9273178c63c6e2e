//! FUSE connections that outlive the process serving them.
//!
//! A lazy layer is mounted with `mount(2)` on a `/dev/fuse` descriptor skiff opens itself, so the
//! descriptor (a [`FuseConnection`]) can be copied to the keeper (`skiff-keeper`), which holds it while no
//! skiffd runs: the kernel keeps the connection, and requests made meanwhile wait in its queue.
//!
//! fuser expects to answer the kernel's `INIT` itself when a session starts, and a connection taken over
//! sends no second `INIT`. So every session starts the same way: fuser is handed one end of a
//! `SOCK_SEQPACKET` socket pair (one message per read, as `/dev/fuse` reads are) on which skiff has
//! written the connection's `INIT` request, recorded when the layer was first mounted; fuser answers it
//! there, and then the real `/dev/fuse` descriptor is `dup3`ed onto the descriptor number fuser reads
//! from, so every later read, reply and passthrough ioctl goes to the kernel. On a fresh mount the reply
//! fuser wrote is passed on to the kernel; on a takeover it is dropped (the kernel settled the
//! connection's parameters at mount time, and the same filesystem code would answer the same), and
//! `FUSE_NOTIFY_RESEND` asks the kernel to queue again the requests the previous daemon had read but not
//! answered.
//!
//! Only one file (one `fuse_dev`) serves a connection: fuser's worker threads share it rather than
//! cloning it, because the kernel ends the requests in flight on a cloned descriptor with an error when
//! that descriptor closes (the daemon dying), while requests on a descriptor the keeper also holds stay
//! queued for the next daemon.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;

/// `FUSE_NOTIFY_RESEND` (protocol 7.40): the kernel queues again every request a reader took but did
/// not answer.
const FUSE_NOTIFY_RESEND: i32 = 7;
/// Large enough for any request the kernel may send before `INIT` is answered.
const READ_BUFFER: usize = (1 << 20) + 4096;

/// One FUSE connection: its `/dev/fuse` descriptor and the `INIT` request the kernel sent when it was
/// mounted.
#[derive(Debug)]
pub struct FuseConnection {
    device: OwnedFd,
    init: Vec<u8>,
}

impl FuseConnection {
    /// A connection taken back from whoever held it (the keeper), with its recorded `INIT`.
    pub fn from_parts(device: OwnedFd, init: Vec<u8>) -> FuseConnection {
        FuseConnection { device, init }
    }

    /// Opens `/dev/fuse` and mounts it read-only at `mountpoint` as `fuse.skiff` named `fsname`
    /// (`allow_other`, `default_permissions`, devices and setuid allowed, as the layer's files say),
    /// then reads the kernel's `INIT`.
    pub fn mount(mountpoint: &Path, fsname: &str) -> io::Result<FuseConnection> {
        let device = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(
            |errno| {
                io::Error::new(
                    io::Error::from(errno).kind(),
                    format!("open /dev/fuse: {errno}"),
                )
            },
        )?;
        let root_mode = nix::sys::stat::stat(mountpoint)?.st_mode & libc::S_IFMT;
        let data = format!(
            "fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions,allow_other",
            device.as_raw_fd()
        );
        nix::mount::mount(
            Some(fsname),
            mountpoint,
            Some("fuse.skiff"),
            MsFlags::MS_RDONLY,
            Some(data.as_str()),
        )?;
        let mut buf = vec![0u8; READ_BUFFER];
        let read = loop {
            match nix::unistd::read(&device, &mut buf) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
                    return Err(errno.into());
                }
            }
        };
        buf.truncate(read);
        Ok(FuseConnection { device, init: buf })
    }

    pub fn device(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// The `INIT` request as the kernel sent it (to be kept beside the descriptor).
    pub fn init_request(&self) -> &[u8] {
        &self.init
    }

    /// Whether the kernel still has this connection (neither unmounted nor aborted).
    pub fn is_alive(&self) -> bool {
        let mut polls = [nix::poll::PollFd::new(
            self.device.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        match nix::poll::poll(&mut polls, nix::poll::PollTimeout::ZERO) {
            Ok(_) => !polls[0].revents().is_some_and(|r| {
                r.intersects(
                    nix::poll::PollFlags::POLLERR
                        | nix::poll::PollFlags::POLLHUP
                        | nix::poll::PollFlags::POLLNVAL,
                )
            }),
            Err(_) => false,
        }
    }

    /// Starts serving this connection with `fs` on fuser's worker threads (see the module header).
    /// `fresh`: the connection was just mounted and waits for the answer to its `INIT`; otherwise it
    /// is taken over, and the kernel is asked to resend what the previous server left unanswered.
    pub fn serve<FS: fuser::Filesystem + Send + 'static>(
        &self,
        fs: FS,
        config: fuser::Config,
        fresh: bool,
    ) -> io::Result<fuser::BackgroundSession> {
        let (ours, fusers) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        nix::unistd::write(&ours, &self.init)?;
        let acl = config.acl;
        let session = fuser::Session::from_fd(fs, fusers, acl, config)?;
        let mut reply = vec![0u8; 64 << 10];
        let replied = nix::unistd::read(&ours, &mut reply)?;
        reply.truncate(replied);
        // SAFETY: dup3 replaces the socket behind fuser's descriptor number with the FUSE device; the
        // number stays owned by fuser's channel, and `self.device` keeps its own descriptor.
        let target = session.as_fd().as_raw_fd();
        let dup = unsafe { libc::dup3(self.device.as_raw_fd(), target, libc::O_CLOEXEC) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(ours);
        if fresh {
            nix::unistd::write(&self.device, &reply)?;
        }
        let background = session.spawn()?;
        if !fresh {
            if let Err(err) = self.resend() {
                // A kernel before 6.9: the connection is served, but a request the previous server read
                // and never answered stays unanswered (its reader waits until interrupted).
                tracing::warn!(error = %err, "cannot ask the kernel to resend unanswered FUSE requests");
            }
        }
        Ok(background)
    }

    /// Asks the kernel to queue again the requests a previous server read and never answered.
    fn resend(&self) -> io::Result<()> {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&16u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
        match nix::unistd::write(&self.device, &header) {
            Ok(_) => Ok(()),
            Err(errno) => Err(io::Error::new(
                io::Error::from(errno).kind(),
                format!("FUSE_NOTIFY_RESEND: {errno}"),
            )),
        }
    }

    /// A second descriptor for the same connection (for the keeper).
    pub fn try_clone(&self) -> io::Result<FuseConnection> {
        Ok(FuseConnection {
            device: self.device.try_clone()?,
            init: self.init.clone(),
        })
    }
}

/// Whether `path` is a mount point in this mount namespace. Read from `/proc/self/mountinfo`, never by
/// `stat`: a FUSE mount whose server is away would make `stat` wait for it.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mount_device(path)?.is_some())
}

/// The device (`major:minor`) of the mount at `path`, if one is there (the topmost).
fn mount_device(path: &Path) -> io::Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.as_os_str().as_encoded_bytes();
    Ok(table
        .lines()
        .rev()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let point = fields.nth(1)?;
            (unescape_octal(point) == wanted).then(|| device.to_string())
        })
        .next())
}

/// The overlay mounts stacked on the mount at `path` (it is one of their layers): the root filesystems of
/// the containers that use it, by their mount points.
pub fn overlays_above(path: &Path) -> Vec<std::path::PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let needle = path.to_string_lossy();
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            let (fs_type, _source, options) = (right.next()?, right.next()?, right.next()?);
            let mentions = options
                .split(',')
                .filter_map(|o| o.split_once('='))
                .filter(|(key, _)| matches!(*key, "lowerdir" | "upperdir"))
                .any(|(_, dirs)| dirs.split(':').any(|d| d == needle));
            if fs_type != "overlay" || !mentions {
                return None;
            }
            let point = unescape_octal(left.split(' ').nth(4)?);
            Some(std::path::PathBuf::from(
                String::from_utf8_lossy(&point).into_owned(),
            ))
        })
        .collect()
}

/// Ends the FUSE connection of the mount at `path` (`/sys/fs/fuse/connections/N/abort`): requests
/// waiting in it fail with `ENOTCONN` instead of waiting for a server that will not come. Then detaches
/// the mount. Nothing mounted there is not an error.
pub fn abort_and_detach(path: &Path) -> io::Result<()> {
    let Some(device) = mount_device(path)? else {
        return Ok(());
    };
    if let Some((_, minor)) = device.split_once(':') {
        let abort = Path::new("/sys/fs/fuse/connections")
            .join(minor)
            .join("abort");
        // Not a FUSE mount, or fusectl not mounted: detaching is all that can be done.
        let _ = std::fs::write(abort, b"1");
    }
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Mountinfo fields spell space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && escape.is_some_and(|e| e.iter().all(|b| (b'0'..=b'7').contains(b)))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal("/a\\040b\\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape_octal("/plain"), b"/plain".to_vec());
        assert_eq!(unescape_octal("/x\\04"), b"/x\\04".to_vec());
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()).unwrap());
    }
}

//! The container's root filesystem, set up in the container's own mount namespace: the overlay
//! over the image, `/work`, `/proc` (with the usual entries masked or read-only), a minimal
//! `/dev`, a read-only `/sys`, then `pivot_root`; and the loopback interface of a private
//! network. Runs in the forked child only (see [`crate::container`]).

use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use crate::error::DriverError;

/// The paths [`setup_rootfs`] mounts.
pub(crate) struct RootfsPlan<'a> {
    /// The image's root filesystem (the overlay's lower layer).
    pub rootfs: &'a Path,
    /// The mount point, `<dir>/ctr/root`.
    pub root: &'a Path,
    /// The overlay's upper and work directories.
    pub upper: &'a Path,
    /// The overlay's work directory.
    pub ovl_work: &'a Path,
    /// The attempt's workspace, bound on `/work`.
    pub workspace: &'a Path,
    /// Host files bound read-only over paths inside (`/etc/hosts`, ...).
    pub files: &'a [(PathBuf, PathBuf)],
    /// Host directories bound inside.
    pub mounts: &'a [crate::spec::BindMount],
}

/// Device nodes bind-mounted from the host into the container's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/proc` entries made read-only and entries hidden behind `/dev/null`.
const PROC_READONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
const PROC_MASKED: [&str; 5] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
];

/// mount(2), with an error that names the mount.
pub(crate) fn do_mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), DriverError> {
    mount(src, target, fstype, flags, data).map_err(|source| DriverError::Mount {
        from: src.map(Path::to_path_buf),
        target: target.to_path_buf(),
        fstype: fstype.map(str::to_string),
        options: data.map(str::to_string),
        source,
    })
}

/// `mkdir -p`.
pub(crate) fn mkdirs(p: &Path) -> Result<(), DriverError> {
    fs::create_dir_all(p).map_err(|e| DriverError::io("create", p, e))
}

/// `target` (absolute, inside the container) under `root`, refusing `..` and any symlink on
/// the way (it would resolve against the host's root here, before the pivot).
fn inside(root: &Path, target: &Path) -> Result<PathBuf, DriverError> {
    let refuse = |why: &str| DriverError::InContainer {
        message: format!("cannot mount at {}: {why}", target.display()),
    };
    let mut at = root.to_path_buf();
    for c in target.components() {
        match c {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(n) => {
                at.push(n);
                if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(refuse("the image has a symlink on the way"));
                }
            }
            _ => return Err(refuse("the path must be absolute, without `.` or `..`")),
        }
    }
    Ok(at)
}

/// Mount the overlay and the pseudo filesystems, then pivot into it.
pub(crate) fn setup_rootfs(p: &RootfsPlan<'_>) -> Result<(), DriverError> {
    let root = &p.root;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        p.rootfs.display(),
        p.upper.display(),
        p.ovl_work.display()
    );
    if let Err(first) = do_mount(
        Some(Path::new("overlay")),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&opts),
    ) {
        // The attempt directory's filesystem cannot hold an overlay upper
        // layer (e.g. it is itself an overlayfs or NFS): keep the writes in
        // a tmpfs private to this mount namespace instead.
        let on_tmpfs = || {
            do_mount(
                Some(Path::new("tmpfs")),
                p.upper,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=755"),
            )?;
            let (u, w) = (p.upper.join("u"), p.upper.join("w"));
            mkdirs(&u)?;
            mkdirs(&w)?;
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                p.rootfs.display(),
                u.display(),
                w.display()
            );
            do_mount(
                Some(Path::new("overlay")),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&opts),
            )
        };
        on_tmpfs().map_err(|e| DriverError::OverlayFallback {
            overlay: Box::new(first),
            fallback: Box::new(e),
        })?;
    }
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // /work: the attempt's workspace.
    let work = root.join("work");
    mkdirs(&work)?;
    do_mount(
        Some(p.workspace),
        &work,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;

    // Host directories (a shared directory, --mount): the target is made in the overlay's
    // upper layer; one reached through a symlink of the image is refused, as the link would
    // be followed on the host.
    for m in p.mounts {
        let dst = inside(root, &m.target)?;
        mkdirs(&dst)?;
        // A read-only bind takes no submounts along: a remount makes only its top mount
        // read-only, and a submount would stay writable.
        let rec = if m.read_only {
            MsFlags::empty()
        } else {
            MsFlags::MS_REC
        };
        do_mount(Some(&m.source), &dst, None, MsFlags::MS_BIND | rec, None)?;
        if m.read_only {
            do_mount(
                None,
                &dst,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }

    // Files of the attempt over the image's (/etc/hosts, /etc/resolv.conf): the target is made
    // in the overlay's upper layer when the image lacks it.
    for (src, target) in p.files {
        // Its directory must not be reached through a symlink of the image (the file itself
        // may be one: it is replaced below).
        let parent = target.parent().unwrap_or(Path::new("/"));
        let name = target.file_name().unwrap_or_default();
        let dst = inside(root, parent)?.join(name);
        // A symlink in the image (`/etc/resolv.conf -> /run/...`) would be followed by the
        // mount, outside the container's root: replace it with a file.
        if fs::symlink_metadata(&dst).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&dst).map_err(|source| DriverError::Io {
                op: "replace the symlink",
                path: dst.clone(),
                source,
            })?;
        }
        if fs::symlink_metadata(&dst).is_err() {
            if let Some(dir) = dst.parent() {
                mkdirs(dir)?;
            }
            fs::File::create(&dst).map_err(|source| DriverError::Io {
                op: "create the bind target",
                path: dst.clone(),
                source,
            })?;
        }
        do_mount(Some(src), &dst, None, MsFlags::MS_BIND, None)?;
        do_mount(
            None,
            &dst,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }

    // /proc, with the usual sensitive entries masked or read-only.
    let proc_ = root.join("proc");
    mkdirs(&proc_)?;
    do_mount(
        Some(Path::new("proc")),
        &proc_,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;

    // /dev: a small tmpfs with bind-mounted host device nodes.
    let dev = root.join("dev");
    mkdirs(&dev)?;
    do_mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if fs::metadata(&host).is_err() {
            continue;
        }
        let target = dev.join(name);
        File::create(&target).map_err(|e| DriverError::io("create", &target, e))?;
        do_mount(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    mkdirs(&pts)?;
    do_mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdirs(&shm)?;
    do_mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )?;
    let mqueue = dev.join("mqueue");
    mkdirs(&mqueue)?;
    // Best effort: needs CONFIG_POSIX_MQUEUE.
    let _ = do_mount(
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        nosuid_nodev_noexec,
        None,
    );
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link))
            .map_err(|e| DriverError::io("create", dev.join(link), e))?;
    }
    fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777))
        .map_err(|e| DriverError::io("chmod", &shm, e))?;

    // /sys, read-only. A fresh sysfs needs a network namespace we own; with
    // the host network fall back to a read-only recursive bind.
    let sys = root.join("sys");
    mkdirs(&sys)?;
    let ro = MsFlags::MS_RDONLY | nosuid_nodev_noexec;
    if do_mount(Some(Path::new("sysfs")), &sys, Some("sysfs"), ro, None).is_err() {
        do_mount(
            Some(Path::new("/sys")),
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        do_mount(
            None,
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
            None,
        )?;
    }

    for name in PROC_READONLY {
        let t = proc_.join(name);
        if fs::symlink_metadata(&t).is_err() {
            continue;
        }
        do_mount(Some(&t), &t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        do_mount(
            None,
            &t,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
            None,
        )?;
    }
    for name in PROC_MASKED {
        let t = proc_.join(name);
        if fs::metadata(&t).map(|m| m.is_file()).unwrap_or(false) {
            do_mount(Some(&dev.join("null")), &t, None, MsFlags::MS_BIND, None)?;
        }
    }

    // Enter the new root; the old one is stacked below it and detached.
    chdir(*root).map_err(|source| DriverError::Chdir {
        path: root.to_path_buf(),
        source,
    })?;
    pivot_root(".", ".").map_err(DriverError::sys("pivot_root", "pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(DriverError::sys("umount2", "cannot detach the old root"))?;
    chdir("/").map_err(DriverError::sys("chdir", "chdir /"))?;
    Ok(())
}

/// Bring the loopback interface of the (new) network namespace up.
pub(crate) fn loopback_up() -> Result<(), DriverError> {
    // SAFETY: socket(2) takes integers. `from_raw_fd` needs an open fd that nothing else owns:
    // `fd` was just returned by socket (checked non-negative) and is wrapped once, so it is
    // closed exactly once. An all-zero `ifreq` is a valid value (a name array and a union of
    // plain integers); "lo" is written into its first two bytes, so the 16-byte name stays
    // NUL-terminated. SIOCGIFFLAGS writes into, and SIOCSIFFLAGS reads, that `ifreq`, a live
    // local of the size the kernel expects; after SIOCGIFFLAGS, `ifru_flags` is the initialised
    // member of the union.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(DriverError::last_os("socket", "socket"));
        }
        let _guard = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(DriverError::last_os("ioctl", "SIOCGIFFLAGS lo"));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(DriverError::last_os("ioctl", "cannot bring lo up"));
        }
    }
    Ok(())
}

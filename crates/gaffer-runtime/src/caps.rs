//! Capabilities and credentials of a container's processes: Docker's default bounding set,
//! the switch to the task's user, and capset(2).

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use crate::error::DriverError;

/// Capabilities kept in the bounding set (Docker's default set): CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
/// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub const DEFAULT_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The default capability set as a 64-bit mask.
pub(crate) fn default_caps_mask() -> u64 {
    DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c))
}

/// Shrink the bounding set to [`DEFAULT_CAPS`], clear ambient capabilities,
/// switch to `uid:gid`, and set effective = permitted = the default set for
/// uid 0 (nothing for other users; the kernel already cleared them).
pub(crate) fn drop_privileges(uid: u32, gid: u32, last_cap: u32) -> Result<(), DriverError> {
    for cap in 0..=last_cap {
        if DEFAULT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and reads or writes no memory of
        // this process; an unknown number fails with EINVAL, handled below.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = Errno::last();
            // EINVAL: capability unknown to this kernel.
            if e != Errno::EINVAL {
                return Err(DriverError::DropCapability { cap, source: e });
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT with PR_CAP_AMBIENT_CLEAR_ALL takes integers only and reads or
    // writes no memory of this process.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let g = Gid::from_raw(gid);
    nix::unistd::setgroups(&[g]).map_err(DriverError::sys("setgroups", "setgroups"))?;
    nix::unistd::setresgid(g, g, g).map_err(|source| DriverError::SetId {
        call: "setresgid",
        id: gid,
        source,
    })?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|source| DriverError::SetId {
        call: "setresuid",
        id: uid,
        source,
    })?;
    let mask = if uid == 0 { default_caps_mask() } else { 0 };
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        CapData {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) with a version 3 header reads the header (and may write a preferred
    // version back into it, hence `&mut`) and reads two data structs, as version 3 requires.
    // `CapHeader` and `CapData` are `repr(C)` copies of the kernel's
    // `__user_cap_header_struct` and `__user_cap_data_struct`, and `hdr` and `data` are locals
    // that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(DriverError::last_os("capset", "capset"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_match_docker() {
        assert_eq!(default_caps_mask(), 0xa804_25fb);
    }
}

//! Descriptors warden inherited from whoever started it.

/// Marks every descriptor from 3 up close-on-exec, so that none that warden
/// inherited (a file its parent had open, say) reaches a child: a child
/// reads an open descriptor whatever its user, so one opened by root would
/// leak to a `user = "nobody"` service. Called once, first thing in `warden
/// run`; warden's own descriptors are close-on-exec already (std and tokio
/// open them so), and warden hands none to a service on purpose. Returns
/// how many were open.
pub fn close_inherited_on_exec() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    // Collect first: the directory itself is an open descriptor.
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    let mut marked = 0;
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags;
        // a descriptor closed meanwhile (the directory's own) gives EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == 0 {
            marked += 1;
        }
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inherited_descriptor_is_marked_close_on_exec() {
        // A descriptor without FD_CLOEXEC, as a parent would pass one.
        // SAFETY: dup of stdin, closed below.
        let fd = unsafe { libc::dup(0) };
        assert!(fd > 2);
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, 0, "dup clears FD_CLOEXEC");
        assert!(close_inherited_on_exec() >= 1);
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        unsafe { libc::close(fd) };
    }
}

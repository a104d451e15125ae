//! The offsets node mode's exec program follows from the new task to its environment strings
//! (`task_struct.mm`, `mm_struct.env_start` and `env_end`), read from the running kernel's BTF.

use ddtrace_common::ExecLayout;

use super::{btf::Btf, socket_layout::SocketLayoutError};

/// Reads the layout from `/sys/kernel/btf/vmlinux`.
pub fn exec_layout_from_kernel() -> Result<ExecLayout, SocketLayoutError> {
    exec_layout(&mut Btf::from_kernel()?)
}

/// Every member is a pointer or an `unsigned long`: a layout that says otherwise is refused.
pub fn exec_layout(btf: &mut Btf) -> Result<ExecLayout, SocketLayoutError> {
    let mut offset = |strukt: &'static str, member: &'static str| {
        let place = btf.member(strukt, member)?;
        if place.size != 8 {
            return Err(SocketLayoutError::UnexpectedSize { strukt, member, actual: place.size, expected: 8 });
        }
        Ok(place.offset)
    };
    Ok(ExecLayout {
        known: 1,
        task_mm: offset("task_struct", "mm")?,
        mm_env_start: offset("mm_struct", "env_start")?,
        mm_env_end: offset("mm_struct", "env_end")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_the_members() {
        let layout =
            super::exec_layout_from_kernel().expect("the kernel's BTF names task_struct.mm and mm_struct.env_*");
        assert_eq!(layout.known, 1);
        assert_eq!(layout.mm_env_end, layout.mm_env_start + 8, "env_end follows env_start: {layout:?}");
    }
}

//! One executable file (ELF) as the unwinder needs it: its load segments (to place it in a
//! process) and the sections framehop asks for (`.eh_frame`, `.eh_frame_hdr`,
//! `.debug_frame`, `.text`, `.got`), as views into a shared read-only mapping of the file.

use std::{fs::File, ops::Range, os::fd::AsRawFd as _, sync::Arc};

use framehop::ModuleSectionInfo;
use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// The sections framehop may ask for (section_data/section_svma_range).
const SECTIONS: [&[u8]; 5] = [
    b".eh_frame",
    b".eh_frame_hdr",
    b".debug_frame",
    b".text",
    b".got",
];

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("mapping the file: {0}")]
    Map(#[from] std::io::Error),
    #[error("parsing the ELF file: {0}")]
    Parse(#[from] object::Error),
}

/// Bytes of a shared file mapping (what framehop's modules hold).
#[derive(Clone)]
pub struct Slice {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl std::ops::Deref for Slice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// A parsed module file.
pub struct ModuleData {
    /// The file's identity (device as the kernel encodes it, inode).
    pub key: (u64, u64),
    /// Kept open: symbolization reads it through `/proc/self/fd/N` (the file as the traced
    /// process saw it, in its mount namespace, even after it exited or the path changed).
    file: File,
    map: Arc<Mmap>,
    /// PT_LOAD segments: (file offset, virtual address, file size).
    loads: Vec<(u64, u64, u64)>,
    /// Sections framehop may use: name, address range, file byte range.
    sections: Vec<(&'static [u8], Range<u64>, Range<usize>)>,
    /// The GNU build-id (names the framehop module).
    build_id: Option<Vec<u8>>,
}

impl ModuleData {
    pub fn parse(key: (u64, u64), file: File) -> Result<ModuleData, ModuleError> {
        // SAFETY: the mapping is read-only and private; a file truncated under us would
        // fault, as for every reader of mapped executables (the kernel refuses writes to a
        // file being executed; libraries are replaced by rename, not rewritten in place).
        let map = Arc::new(unsafe { Mmap::map(&file) }?);
        let elf = object::File::parse(&map[..])?;
        let loads = elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect();
        let mut sections = Vec::new();
        for name in SECTIONS {
            let Some(sec) = elf.section_by_name_bytes(name) else {
                continue;
            };
            let Some((off, size)) = sec.file_range() else {
                continue;
            };
            // Compressed sections (a .debug_frame may be) are not read.
            if !matches!(
                sec.compressed_file_range().map(|c| c.format),
                Ok(object::CompressionFormat::None)
            ) {
                continue;
            }
            let (Ok(off), Ok(size)) = (usize::try_from(off), usize::try_from(size)) else {
                continue;
            };
            let Some(end) = off.checked_add(size).filter(|&e| e <= map.len()) else {
                continue;
            };
            sections.push((name, sec.address()..sec.address() + size as u64, off..end));
        }
        let build_id = elf.build_id().ok().flatten().map(<[u8]>::to_vec);
        drop(elf);
        Ok(ModuleData {
            key,
            file,
            map,
            loads,
            sections,
            build_id,
        })
    }

    /// The path symbolization opens (the open file itself).
    pub fn symbol_path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }

    /// The framehop module for this file mapped at `start..end` from file offset `offset`;
    /// None when no load segment holds that offset.
    pub fn framehop_module(
        &self,
        start: u64,
        end: u64,
        offset: u64,
    ) -> Option<framehop::Module<Slice>> {
        let &(seg_offset, seg_vaddr, _) = self.loads.iter().find(|&&(o, _, size)| {
            // A segment's mapping starts at its offset rounded down to the page.
            let first = o & !0xfff;
            offset >= first && offset < o + size.max(1)
        })?;
        // The address in the file's own terms (SVMA) of `start`; base_avma: where SVMA 0 is.
        let svma_start = offset.wrapping_sub(seg_offset).wrapping_add(seg_vaddr);
        let base_avma = start.wrapping_sub(svma_start);
        let info = SectionInfo { module: self };
        Some(framehop::Module::new(
            match &self.build_id {
                Some(id) => id.iter().map(|b| format!("{b:02x}")).collect(),
                None => format!("{:x}:{:x}", self.key.0, self.key.1),
            },
            start..end,
            base_avma,
            info,
        ))
    }

    fn section(&self, name: &[u8]) -> Option<&(&'static [u8], Range<u64>, Range<usize>)> {
        self.sections.iter().find(|(n, _, _)| *n == name)
    }
}

struct SectionInfo<'a> {
    module: &'a ModuleData,
}

impl ModuleSectionInfo<Slice> for SectionInfo<'_> {
    fn base_svma(&self) -> u64 {
        0
    }

    fn section_svma_range(&mut self, name: &[u8]) -> Option<Range<u64>> {
        self.module.section(name).map(|(_, r, _)| r.clone())
    }

    fn section_data(&mut self, name: &[u8]) -> Option<Slice> {
        self.module.section(name).map(|(_, _, r)| Slice {
            map: self.module.map.clone(),
            range: r.clone(),
        })
    }
}

//! The text upstream 2.2.0's `inspect` prints for each reply, line for line (its shell,
//! and its request mode for the requests that answer in text), so that scripts reading
//! either see the same thing. Names are shown as Rust's `Debug` shows an `OsStr`, as
//! upstream shows them.

use std::ffi::OsStr;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;

use super::{ChunkDetail, FileStat, Reply, USAGE};

/// The text for `reply`; see [`Reply::text`].
pub(super) fn text(reply: &Reply, request_mode: bool) -> String {
    let mut out = String::new();
    let o = &mut out;
    match reply {
        Reply::Stats(s) if !request_mode => {
            let _ = writeln!(
                o,
                "\n    Version:                {}\n    Inodes Count:           {}\n    Chunk Size:             {}KB\n    Root Inode:             {}\n    Flags:                  {}\n    Blob table offset:      0x{:x}\n    Blob table size:        0x{:x}\n    Prefetch table offset:  0x{:x}\n    Prefetch table entries: 0x{:x}\n    Chunk table offset:     0x{:x}\n    Chunk table size:       0x{:x}\n    ",
                s.version,
                s.inodes_count,
                s.chunk_size / 1024,
                s.root_inode,
                s.flags.join(" | "),
                s.blob_table.0,
                s.blob_table.1,
                s.prefetch_table.0,
                s.prefetch_table.1,
                s.chunk_table.0,
                s.chunk_table.1,
            );
        }
        Reply::Blobs(blobs) if !request_mode => {
            for b in blobs {
                let d = &b.detail;
                let _ = write!(
                    o,
                    "\nBlob Index:             {}\nBlob ID:                {}\nRaw Blob ID:            {}\nBlob Size:              {}\nCompressed Data Size:   {}\nUncompressed Data Size: {}\nFeatures:               {}\nCompressor:             {}\nDigester:               {}\nChunk Size:             0x{:x}\nChunk Count:            {}\nPrefetch Table Offset:  {}\nPrefetch Table Size:    {}\nMeta Compressor:        {}\nMeta Offset:            {}\nMeta Compressed Size:   {}\nMeta Uncompressed Size: {}\nToC Digest:             {}\nToC Size:               {}\nRAFS Blob Digest:       {}\nRAFS Blob Size:         {}\n",
                    d.index,
                    b.blob_id,
                    b.blob_id,
                    b.compressed_size,
                    d.compressed_data_size,
                    b.decompressed_size,
                    d.features.join(" | "),
                    d.compressor,
                    d.digester,
                    d.chunk_size,
                    d.chunk_count,
                    b.readahead_offset,
                    b.readahead_size,
                    d.meta.0,
                    d.meta.1,
                    d.meta.2,
                    d.meta.3,
                    d.toc.0,
                    d.toc.1,
                    hex::encode([0u8; 32]),
                    0,
                );
            }
        }
        Reply::Prefetch(entries) if !request_mode => {
            let _ = writeln!(o, "Total Prefetching Files: {}", entries.len());
            for e in entries {
                let _ = writeln!(
                    o,
                    "Inode Number:{:10} | Path: {:?} ",
                    e.inode,
                    e.path.join(" ")
                );
            }
        }
        Reply::Stats(_) | Reply::Blobs(_) | Reply::Prefetch(_) => {}
        Reply::Listing(entries) => {
            for e in entries {
                let _ = writeln!(
                    o,
                    "{}    {:<8} {:?}",
                    e.sign,
                    e.ino,
                    OsStr::from_bytes(&e.name)
                );
            }
        }
        Reply::Cd(None) => {}
        Reply::Cd(Some((name, why))) => {
            let _ = writeln!(o, "{name} is {why}");
        }
        Reply::Files(files) => {
            for f in files {
                if let Some(path) = &f.path {
                    let _ = writeln!(o, "{}", String::from_utf8_lossy(path));
                }
                if f.shown {
                    file_stat(o, f);
                }
            }
        }
        Reply::Chunk(users) => {
            for u in users {
                let c = &u.chunk;
                let _ = writeln!(
                    o,
                    "\nFile: {:32} Parent Path: {:32}\nCompressed Offset: {}, Compressed Size: {}\nDecompressed Offset: {}, Decompressed Size: {}\nChunk ID: {:50}, \nBlob ID: {}\n",
                    String::from_utf8_lossy(&u.name),
                    String::from_utf8_lossy(&u.parent_path),
                    c.compressed_offset,
                    c.compressed_size,
                    c.decompressed_offset,
                    c.decompressed_size,
                    c.chunk_id,
                    c.blob_id,
                );
            }
        }
        Reply::Help => {
            let _ = writeln!(o, "{USAGE}");
        }
        Reply::Exit => {}
    }
    out
}

/// One entry's attribute block, and its chunk list when it has one.
fn file_stat(o: &mut String, f: &FileStat) {
    let _ = writeln!(
        o,
        "\nInode Number:       {}\nName:               {:?}\nSize:               {}\nParent:             {}\nMode:               0x{:X}\nPermissions:        {:o}\nNlink:              {}\nUID:                {}\nGID:                {}\nMtime:              {}\nMtimeNsec:          {}\nBlocks:             {}",
        f.ino,
        OsStr::from_bytes(&f.name),
        f.size,
        f.parent,
        f.mode,
        f.mode,
        f.nlink,
        f.uid,
        f.gid,
        // Upstream's attribute is unsigned: a time before 1970 shows as 2^64 less.
        f.mtime as u64,
        f.mtime_nsec,
        f.blocks,
    );
    if let Some(chunks) = &f.chunks {
        let _ = writeln!(o, "  Chunk list:");
        for (i, c) in chunks.iter().enumerate() {
            chunk(o, i, c);
        }
    }
}

fn chunk(o: &mut String, i: usize, c: &ChunkDetail) {
    let _ = writeln!(
        o,
        "        {i} ->\n        file offset: {}, chunk index: {}\n        compressed size: {}, decompressed size: {}\n        compressed offset: {}, decompressed offset: {}\n        blob id: {}\n        chunk id: {}\n    ",
        c.file_offset,
        c.index,
        c.compressed_size,
        c.decompressed_size,
        c.compressed_offset,
        c.decompressed_offset,
        c.blob_id,
        c.chunk_id,
    );
}

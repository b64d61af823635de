#!/usr/bin/env python3
"""Writes the seeds of the go_elf fuzz target (and the unit-test fixture of
agent/src/trace/tls/go.rs): a minimal Go-like ELF file made of the real code of
crypto/tls.(*Conn).Read and Write taken from a Go build, with a .symtab naming them and a
.go.buildinfo saying which Go built it; and that code alone.

    python3 fuzz/seeds/make_go_seeds.py path/to/go-binary-with-symbols

(tests/go/tlsclient built by `go build`; the checked-in files came from Debian's go1.19.8.)
"""
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURE = os.path.join(ROOT, 'agent/src/trace/tls/testdata/go_min.elf')
NAMES = ['crypto/tls.(*Conn).Read', 'crypto/tls.(*Conn).Write']
BASE = 0x400000


def function_bytes(binary, name):
    """(bytes) of a function, through go tool nm's address and size and the file's
    executable segment."""
    nm = subprocess.run(['go', 'tool', 'nm', '-size', binary], check=True,
                        capture_output=True, text=True).stdout
    for line in nm.splitlines():
        f = line.split(None, 3)
        if len(f) == 4 and f[2] == 'T' and f[3] == name:
            addr, size = int(f[0], 16), int(f[1])
            break
    else:
        sys.exit(f'{name} not in {binary}')
    data = open(binary, 'rb').read()
    phoff, = struct.unpack_from('<Q', data, 0x20)
    phentsize, phnum = struct.unpack_from('<HH', data, 0x36)
    for i in range(phnum):
        p_type, p_flags, off, vaddr, _, filesz = struct.unpack_from(
            '<IIQQQQ', data, phoff + i * phentsize)
        if p_type == 1 and p_flags & 1 and vaddr <= addr < vaddr + filesz:
            start = off + addr - vaddr
            return data[start:start + size]
    sys.exit(f'{name} not in an executable segment')


def uvarint(n):
    out = b''
    while n >= 0x80:
        out += bytes([n & 0x7f | 0x80])
        n >>= 7
    return out + bytes([n])


def elf(code, syms, version):
    """ELF64 x86-64 executable: [ehdr][phdr][.text][.go.buildinfo][.symtab][.strtab]
    [.shstrtab][shdrs]; one R+X PT_LOAD maps the whole file at BASE."""
    ehdr_size, phdr_size, shdr_size = 64, 56, 64
    text_off = ehdr_size + phdr_size
    bi = b'\xff Go buildinf:' + bytes([8, 2]) + bytes(16)
    bi += uvarint(len(version)) + version + uvarint(0)
    bi_off = text_off + len(code)
    strtab = b'\0'
    symtab = bytes(24)
    for name, (off, size) in syms.items():
        symtab += struct.pack('<IBBHQQ', len(strtab), 0x12, 0, 1, BASE + text_off + off, size)
        strtab += name.encode() + b'\0'
    sym_off = bi_off + len(bi)
    sym_off += -sym_off % 8
    str_off = sym_off + len(symtab)
    shstr = b'\0.text\0.go.buildinfo\0.symtab\0.strtab\0.shstrtab\0'
    shstr_off = str_off + len(strtab)
    sh_off = shstr_off + len(shstr)
    sh_off += -sh_off % 8
    # name, type, flags, addr, offset, size, link, info, align, entsize
    sections = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (shstr.index(b'.text'), 1, 6, BASE + text_off, text_off, len(code), 0, 0, 32, 0),
        (shstr.index(b'.go.buildinfo'), 1, 3, BASE + bi_off, bi_off, len(bi), 0, 0, 16, 0),
        (shstr.index(b'.symtab'), 2, 0, 0, sym_off, len(symtab), 4, 1, 8, 24),
        (shstr.index(b'.strtab'), 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        (shstr.index(b'.shstrtab'), 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0),
    ]
    size = sh_off + shdr_size * len(sections)
    ehdr = b'\x7fELF' + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack('<HHIQQQIHHHHHH', 2, 62, 1, BASE + text_off, ehdr_size, sh_off, 0,
                        ehdr_size, phdr_size, 1, shdr_size, len(sections), len(sections) - 1)
    phdr = struct.pack('<IIQQQQQQ', 1, 5, 0, BASE, BASE, size, size, 0x1000)
    out = bytearray(size)
    out[0:64] = ehdr
    out[64:120] = phdr
    out[text_off:text_off + len(code)] = code
    out[bi_off:bi_off + len(bi)] = bi
    out[sym_off:sym_off + len(symtab)] = symtab
    out[str_off:str_off + len(strtab)] = strtab
    out[shstr_off:shstr_off + len(shstr)] = shstr
    for i, s in enumerate(sections):
        out[sh_off + i * shdr_size:sh_off + (i + 1) * shdr_size] = struct.pack(
            '<IIQQQQIIQQ', *s)
    return bytes(out)


def main():
    binary = sys.argv[1]
    version = subprocess.run(['go', 'version', binary], check=True, capture_output=True,
                             text=True).stdout.split()[1].encode()
    code, syms = b'', {}
    for name in NAMES:
        body = function_bytes(binary, name)
        syms[name] = (len(code), len(body))
        code += body
        code += b'\xcc' * (-len(code) % 32)
    out = os.path.join(HERE, 'go_elf')
    os.makedirs(out, exist_ok=True)
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, 'wb') as f:
        f.write(elf(code, syms, version))
    shutil.copy(FIXTURE, os.path.join(out, 'go_min_elf'))
    with open(os.path.join(out, 'conn_read_code'), 'wb') as f:
        f.write(code[:syms[NAMES[0]][1]])


if __name__ == '__main__':
    main()

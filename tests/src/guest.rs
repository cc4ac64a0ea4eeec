//! The tiny test guest: a hand-assembled 16-bit x86 boot sector on a 1 MiB raw disk, and the
//! domain XML that runs it.
//!
//! SeaBIOS (QEMU's default firmware for `pc` and `q35`) loads the sector at `0000:7C00` and
//! jumps to it. The guest then:
//!
//! 1. initialises COM1 (I/O port `0x3F8`) at 115200 baud, 8N1, FIFOs on, interrupts off;
//! 2. prints [`banner_line`]`(banner)` (`rvirt guest <banner> ready\r\n`) on COM1;
//! 3. polls COM1's line status register forever and echoes every byte it receives. Three bytes
//!    also act after their echo:
//!    - [`POWER_OFF`] (`p`): ACPI soft-off. The guest finds the ACPI PM I/O base in PCI
//!      configuration space (ICH9 LPC at 00:1f.0 on `q35`, else PIIX4 PM at 00:01.3 on `pc`,
//!      register `0x40` either way, as SeaBIOS programmed it) and writes `SLP_EN` with
//!      `SLP_TYP = 0` (`0x2000`) to `PM1a_CNT` (base + 4). `SLP_TYP` 0 is what QEMU's ACPI
//!      tables declare for `\_S5` and what its PM1 control register treats as soft power-off
//!      on both chipsets; QEMU reports `SHUTDOWN` with `"guest": true`. ACPI must be on (the
//!      domain XML's `<features><acpi/>`): without it `pc` has no PIIX4 PM device and the write
//!      goes nowhere, and the guest just halts;
//!    - [`RESET`] (`r`): writes `0x06` to the reset control register `0xCF9` (full reset; both
//!      PIIX3 and ICH9 have it in QEMU), then `0xFE` to the keyboard controller (`0x64`) as a
//!      fallback. QEMU reports `RESET` with `"guest": true`; SeaBIOS itself resets the machine
//!      once more while rebooting, so a second guest `RESET` follows within ~50 ms, and then
//!      the banner is printed again;
//!    - [`HALT`] (`h`): `cli; hlt` forever: the guest ignores everything from then on.
//!
//! **The guest ignores the ACPI power button** at all times: it has no ACPI OS, so nothing
//! answers the SCI that QEMU raises for `system_powerdown` (QEMU emits `POWERDOWN` and the VM
//! keeps running). This is the "guest ignores shutdown" case of the domain lifecycle. Use `p`
//! for a guest that powers itself off.
//!
//! Interrupts stay disabled throughout (the guest polls), so nothing depends on SeaBIOS's
//! interrupt setup. Under TCG the banner arrives ~0.1 s after QEMU starts; under KVM here it
//! takes ~3–4 s, because every port access SeaBIOS makes while booting exits to QEMU.
//!
//! Check the machine code with
//! `objdump -D -b binary -m i8086 --start-address=0 --stop-address=0xbb disk.img`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The size of the disk image [`write_boot_disk`] writes: 1 MiB, sparse.
pub const DISK_SIZE: u64 = 1 << 20;

/// Sent to the guest's serial port: the guest powers itself off through ACPI.
pub const POWER_OFF: u8 = b'p';
/// Sent to the guest's serial port: the guest resets the machine.
pub const RESET: u8 = b'r';
/// Sent to the guest's serial port: the guest halts with interrupts off, for good.
pub const HALT: u8 = b'h';

/// Where in the sector the banner line (NUL-terminated) lives: `0x7D00` once loaded.
const BANNER_OFFSET: usize = 0x100;
/// The longest banner line: it and its NUL end before the boot signature at 510.
const MAX_LINE: usize = 510 - BANNER_OFFSET - 1;

/// The guest's code, loaded at `0000:7C00`. Offsets are from the start of the sector; relative
/// jumps and calls count from the end of their own instruction.
#[rustfmt::skip]
const CODE: &[u8] = &[
    // 0x00 start: flat real-mode segments, a stack below the code.
    0xFA,                         // 00 cli
    0x31, 0xC0,                   // 01 xor ax, ax
    0x8E, 0xD8,                   // 03 mov ds, ax
    0x8E, 0xC0,                   // 05 mov es, ax
    0x8E, 0xD0,                   // 07 mov ss, ax
    0xBC, 0x00, 0x7C,             // 09 mov sp, 0x7C00
    0xFC,                         // 0C cld
    // COM1 (16550A at 0x3F8): 115200 8N1, FIFOs, no interrupts.
    0xBA, 0xF9, 0x03,             // 0D mov dx, 0x3F9      ; IER
    0xB0, 0x00,                   // 10 mov al, 0x00       ; no UART interrupts
    0xEE,                         // 12 out dx, al
    0xBA, 0xFB, 0x03,             // 13 mov dx, 0x3FB      ; LCR
    0xB0, 0x80,                   // 16 mov al, 0x80       ; DLAB = 1
    0xEE,                         // 18 out dx, al
    0xBA, 0xF8, 0x03,             // 19 mov dx, 0x3F8      ; DLL
    0xB0, 0x01,                   // 1C mov al, 0x01       ; divisor 1 = 115200 baud
    0xEE,                         // 1E out dx, al
    0xBA, 0xF9, 0x03,             // 1F mov dx, 0x3F9      ; DLM
    0xB0, 0x00,                   // 22 mov al, 0x00
    0xEE,                         // 24 out dx, al
    0xBA, 0xFB, 0x03,             // 25 mov dx, 0x3FB      ; LCR
    0xB0, 0x03,                   // 28 mov al, 0x03       ; 8 data bits, no parity, 1 stop, DLAB = 0
    0xEE,                         // 2A out dx, al
    0xBA, 0xFA, 0x03,             // 2B mov dx, 0x3FA      ; FCR
    0xB0, 0xC7,                   // 2E mov al, 0xC7       ; enable and clear FIFOs, 14-byte trigger
    0xEE,                         // 30 out dx, al
    0xBA, 0xFC, 0x03,             // 31 mov dx, 0x3FC      ; MCR
    0xB0, 0x03,                   // 34 mov al, 0x03       ; DTR | RTS
    0xEE,                         // 36 out dx, al
    // Print the NUL-terminated banner line at 0x7D00.
    0xBE, 0x00, 0x7D,             // 37 mov si, 0x7D00
    0xAC,                         // 3A print: lodsb
    0x84, 0xC0,                   // 3B test al, al
    0x74, 0x05,                   // 3D jz main            ; -> 44
    0xE8, 0x1F, 0x00,             // 3F call putc          ; -> 61
    0xEB, 0xF6,                   // 42 jmp print          ; -> 3A
    // main: wait for a received byte, echo it, act on p/r/h.
    0xBA, 0xFD, 0x03,             // 44 main: mov dx, 0x3FD ; LSR
    0xEC,                         // 47 in al, dx
    0xA8, 0x01,                   // 48 test al, 0x01      ; data ready
    0x74, 0xF8,                   // 4A jz main            ; -> 44
    0xBA, 0xF8, 0x03,             // 4C mov dx, 0x3F8      ; RBR
    0xEC,                         // 4F in al, dx
    0xE8, 0x0E, 0x00,             // 50 call putc          ; -> 61 (keeps al)
    0x3C, b'p',                   // 53 cmp al, 'p'
    0x74, 0x1B,                   // 55 je poweroff        ; -> 72
    0x3C, b'r',                   // 57 cmp al, 'r'
    0x74, 0x54,                   // 59 je reset           ; -> AF
    0x3C, b'h',                   // 5B cmp al, 'h'
    0x74, 0x4C,                   // 5D je halt            ; -> AB
    0xEB, 0xE3,                   // 5F jmp main           ; -> 44
    // putc: send al on COM1 once the transmitter holding register is empty. Keeps al;
    // clobbers ah and dx.
    0x88, 0xC4,                   // 61 putc: mov ah, al
    0xBA, 0xFD, 0x03,             // 63 mov dx, 0x3FD      ; LSR
    0xEC,                         // 66 wait: in al, dx
    0xA8, 0x20,                   // 67 test al, 0x20      ; THR empty
    0x74, 0xFB,                   // 69 jz wait            ; -> 66
    0x88, 0xE0,                   // 6B mov al, ah
    0xBA, 0xF8, 0x03,             // 6D mov dx, 0x3F8      ; THR
    0xEE,                         // 70 out dx, al
    0xC3,                         // 71 ret
    // poweroff: PM1a_CNT = PMBASE + 4 of the ICH9 LPC (q35) or else the PIIX4 PM (pc).
    0x66, 0xB8, 0x00, 0xF8, 0x00, 0x80, // 72 poweroff: mov eax, 0x8000F800 ; 00:1f.0 reg 0x00
    0xBA, 0xF8, 0x0C,             // 78 mov dx, 0xCF8      ; PCI CONFIG_ADDRESS
    0x66, 0xEF,                   // 7B out dx, eax
    0xBA, 0xFC, 0x0C,             // 7D mov dx, 0xCFC      ; PCI CONFIG_DATA
    0x66, 0xED,                   // 80 in eax, dx         ; device:vendor
    0x66, 0x3D, 0x86, 0x80, 0x18, 0x29, // 82 cmp eax, 0x29188086 ; ICH9 LPC?
    0x66, 0xB8, 0x40, 0xF8, 0x00, 0x80, // 88 mov eax, 0x8000F840 ; 00:1f.0 reg 0x40 PMBASE (flags kept)
    0x74, 0x06,                   // 8E je pmbase          ; -> 96
    0x66, 0xB8, 0x40, 0x0B, 0x00, 0x80, // 90 mov eax, 0x80000B40 ; 00:01.3 reg 0x40 PMBA (PIIX4)
    0xBA, 0xF8, 0x0C,             // 96 pmbase: mov dx, 0xCF8
    0x66, 0xEF,                   // 99 out dx, eax
    0xBA, 0xFC, 0x0C,             // 9B mov dx, 0xCFC
    0xED,                         // 9E in ax, dx          ; PMBASE, bit 0 = I/O space
    0x25, 0xC0, 0xFF,             // 9F and ax, 0xFFC0     ; the I/O base
    0x05, 0x04, 0x00,             // A2 add ax, 4          ; PM1a_CNT
    0x89, 0xC2,                   // A5 mov dx, ax
    0xB8, 0x00, 0x20,             // A7 mov ax, 0x2000     ; SLP_EN, SLP_TYP = 0 (QEMU's S5)
    0xEF,                         // AA out dx, ax         ; power off; falls into halt if not
    // halt: interrupts off, halted for good.
    0xFA,                         // AB halt: cli
    0xF4,                         // AC hlt
    0xEB, 0xFC,                   // AD jmp halt           ; -> AB
    // reset: reset control register, then the keyboard controller.
    0xB0, 0x06,                   // AF reset: mov al, 0x06 ; SYS_RST | RST_CPU
    0xBA, 0xF9, 0x0C,             // B1 mov dx, 0xCF9      ; reset control register
    0xEE,                         // B4 out dx, al
    0xB0, 0xFE,                   // B5 mov al, 0xFE       ; pulse the reset line
    0xE6, 0x64,                   // B7 out 0x64, al       ; i8042 command port
    0xEB, 0xF0,                   // B9 jmp halt           ; -> AB
];

const _: () = assert!(CODE.len() <= BANNER_OFFSET);

/// The line the guest prints on COM1 once booted: `rvirt guest <banner> ready\r\n`.
pub fn banner_line(banner: &str) -> String {
    format!("rvirt guest {banner} ready\r\n")
}

/// The 512-byte boot sector that prints [`banner_line`]`(banner)`.
///
/// The banner must be printable ASCII (space to `~`) and short enough that the line fits in
/// the sector (at most 233 bytes).
pub fn boot_sector(banner: &str) -> std::io::Result<[u8; 512]> {
    let line = banner_line(banner);
    if !banner.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the guest banner {banner:?} is not printable ASCII"),
        ));
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the guest banner is {} bytes long; at most {} fit in the boot sector",
                banner.len(),
                MAX_LINE - banner_line("").len()
            ),
        ));
    }
    let mut sector = [0u8; 512];
    sector[..CODE.len()].copy_from_slice(CODE);
    sector[BANNER_OFFSET..BANNER_OFFSET + line.len()].copy_from_slice(line.as_bytes());
    // The byte after the line is the NUL terminator (already zero).
    sector[510] = 0x55;
    sector[511] = 0xAA;
    Ok(sector)
}

/// Writes a bootable 1 MiB raw disk image at `path` (replacing any file there) whose boot
/// sector runs the guest with `banner`. See [`boot_sector`] for the rules on `banner`.
pub fn write_boot_disk(path: &Path, banner: &str) -> std::io::Result<()> {
    let sector = boot_sector(banner)?;
    let mut file = std::fs::File::create(path)?;
    file.write_all(&sector)?;
    file.set_len(DISK_SIZE)?;
    file.sync_all()
}

/// How the guest's serial port reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialKind {
    /// `<serial type='pty'>`: QEMU allocates a pseudo-terminal.
    Pty,
    /// `<serial type='unix'>` with `<source mode='bind' path=…>`: QEMU listens on this socket.
    Unix(PathBuf),
}

/// A minimal domain XML for the guest on `disk`: machine `pc` (i440FX; boots the guest as fast
/// as `q35` under TCG and needs fewer devices), 32 MiB, one vCPU, ACPI on, the disk on virtio
/// as `vda`, one serial port with its console, and nothing else: no graphics, video, USB,
/// balloon or network. `virt_type` is `qemu` (TCG) or `kvm`; with `kvm` the CPU is the custom
/// model `qemu64` (host-passthrough does not work on this machine's nested KVM).
pub fn domain_xml(name: &str, disk: &Path, virt_type: &str, serial: SerialKind) -> String {
    domain_xml_on("pc", name, disk, virt_type, serial)
}

/// [`domain_xml`] on another machine type (`q35`, `pc-i440fx-10.0`, ...). On `q35` the
/// implicit devices libvirt adds (SATA controller, `itco` watchdog, PCIe root ports) come too.
pub fn domain_xml_on(machine: &str, name: &str, disk: &Path, virt_type: &str, serial: SerialKind) -> String {
    let cpu = if virt_type == "kvm" {
        "  <cpu mode='custom' match='exact' check='none'>\n    \
         <model fallback='forbid'>qemu64</model>\n  </cpu>\n"
    } else {
        ""
    };
    let (chardev_type, source) = match &serial {
        SerialKind::Pty => ("pty", String::new()),
        SerialKind::Unix(path) => (
            "unix",
            format!(
                "      <source mode='bind' path='{}'/>\n",
                escape(&path.to_string_lossy())
            ),
        ),
    };
    format!(
        "<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <currentMemory unit='MiB'>32</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
{cpu}  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='{chardev_type}'>
{source}      <target port='0'/>
    </serial>
    <console type='{chardev_type}'>
{source}      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
",
        virt_type = escape(virt_type),
        machine = escape(machine),
        name = escape(name),
        disk = escape(&disk.to_string_lossy()),
    )
}

/// `s` with XML's special characters escaped, for text and single-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes received from the guest's serial port and not yet matched.
///
/// Feed it whatever arrives ([`Transcript::push`]) and take the output through an expected
/// string ([`Transcript::take_through`]); what follows the match stays for the next one, so no
/// output is lost between two expectations. [`SerialReader`] does this over an `AsyncRead`.
#[derive(Debug, Default)]
pub struct Transcript {
    pending: Vec<u8>,
}

impl Transcript {
    /// Appends bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// If `needle` has arrived: everything up to and including its first occurrence, removed.
    pub fn take_through(&mut self, needle: &[u8]) -> Option<Vec<u8>> {
        if needle.is_empty() {
            return Some(Vec::new());
        }
        let at = self.pending.windows(needle.len()).position(|w| w == needle)?;
        let rest = self.pending.split_off(at + needle.len());
        Some(std::mem::replace(&mut self.pending, rest))
    }

    /// What has arrived and not been taken.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

/// A serial port connection (a Unix socket, a pty, ...) read through a [`Transcript`].
#[derive(Debug)]
pub struct SerialReader<R> {
    reader: R,
    transcript: Transcript,
}

impl<R: AsyncRead + Unpin> SerialReader<R> {
    /// Reads `reader`.
    pub fn new(reader: R) -> Self {
        SerialReader {
            reader,
            transcript: Transcript::default(),
        }
    }

    /// The connection, e.g. to write to the guest.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    /// Reads until `needle` has arrived, for at most `timeout`; returns the output through the
    /// first `needle` and keeps what follows. An error says what arrived (and why reading
    /// stopped: end of stream, I/O error or timeout).
    ///
    /// For the guest's banner: `serial.expect(banner_line(b).as_bytes(), Duration::from_secs(60))`.
    pub async fn expect(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
        let reading = async {
            let mut buf = [0u8; 512];
            loop {
                if let Some(output) = self.transcript.take_through(needle) {
                    return Ok(output);
                }
                match self.reader.read(&mut buf).await {
                    Ok(0) => return Err("end of stream".to_owned()),
                    Ok(n) => self.transcript.push(&buf[..n]),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let failure = match tokio::time::timeout(timeout, reading).await {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(e)) => e,
            Err(_) => format!("nothing matching within {timeout:?}"),
        };
        Err(format!(
            "{failure}: expected {:?}, received {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(self.transcript.pending())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt_conf::domain::{DomainDef, FormatFlags, ParseFlags};

    #[test]
    fn boot_sector_ends_with_the_boot_signature_and_holds_the_banner_line() {
        let sector = boot_sector("alpha").expect("a valid banner");
        assert_eq!(&sector[510..], &[0x55, 0xAA]);
        let line = banner_line("alpha");
        assert_eq!(
            &sector[BANNER_OFFSET..BANNER_OFFSET + line.len() + 1],
            format!("{line}\0").as_bytes()
        );
    }

    #[test]
    fn boot_sector_refuses_a_banner_with_a_new_line() {
        let e = boot_sector("a\nb").expect_err("a new line is refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn boot_sector_refuses_a_banner_too_long_for_the_sector() {
        let longest = "x".repeat(MAX_LINE - banner_line("").len());
        boot_sector(&longest).expect("the longest banner fits");
        let e = boot_sector(&format!("{longest}x")).expect_err("one more byte does not");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn transcript_keeps_what_follows_a_match() {
        let mut transcript = Transcript::default();
        transcript.push(b"ab");
        assert_eq!(transcript.take_through(b"bc"), None);
        transcript.push(b"cde");
        assert_eq!(transcript.take_through(b"bc"), Some(b"abc".to_vec()));
        assert_eq!(transcript.pending(), b"de");
    }

    #[test]
    fn write_boot_disk_writes_a_one_mebibyte_image() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("disk.img");
        write_boot_disk(&path, "beta").expect("write the disk");
        let bytes = std::fs::read(&path).expect("read the disk back");
        assert_eq!(bytes.len() as u64, DISK_SIZE);
        assert_eq!(&bytes[..512], &boot_sector("beta").expect("sector")[..]);
    }

    fn parses(xml: &str) -> DomainDef {
        DomainDef::parse(xml, ParseFlags::default())
            .unwrap_or_else(|e| panic!("the guest's domain XML does not parse: {e}\n{xml}"))
    }

    #[test]
    fn domain_xml_with_a_pty_serial_parses_as_a_qemu_domain() {
        let xml = domain_xml("g1", Path::new("/tmp/g1.img"), "qemu", SerialKind::Pty);
        let formatted = parses(&xml)
            .format(FormatFlags::default())
            .expect("format the guest's domain");
        assert!(formatted.contains("<domain type='qemu'>"), "{formatted}");
        assert!(formatted.contains("<serial type='pty'>"), "{formatted}");
        assert!(formatted.contains("<source file='/tmp/g1.img'/>"), "{formatted}");
    }

    #[test]
    fn domain_xml_with_a_unix_serial_and_kvm_parses_with_the_qemu64_cpu() {
        let socket = PathBuf::from("/tmp/it's <here>/serial.sock");
        let xml = domain_xml("g2", Path::new("/tmp/g2.img"), "kvm", SerialKind::Unix(socket));
        let formatted = parses(&xml)
            .format(FormatFlags::default())
            .expect("format the guest's domain");
        assert!(formatted.contains("<domain type='kvm'>"), "{formatted}");
        assert!(formatted.contains("qemu64</model>"), "{formatted}");
        assert!(
            formatted.contains("path='/tmp/it&apos;s &lt;here&gt;/serial.sock'"),
            "{formatted}"
        );
    }

    #[test]
    fn domain_xml_validates_against_libvirts_schema() {
        let socket = SerialKind::Unix(PathBuf::from("/tmp/serial.sock"));
        for xml in [
            domain_xml("g4", Path::new("/tmp/g4.img"), "qemu", SerialKind::Pty),
            domain_xml("g5", Path::new("/tmp/g5.img"), "kvm", socket),
        ] {
            rvirt_testdata::validate("domain.rng", &xml).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn domain_xml_on_q35_parses() {
        let xml = domain_xml_on("q35", "g3", Path::new("/tmp/g3.img"), "qemu", SerialKind::Pty);
        let formatted = parses(&xml)
            .format(FormatFlags::default())
            .expect("format the guest's domain");
        assert!(formatted.contains("machine='q35'"), "{formatted}");
    }
}

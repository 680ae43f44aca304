/*
 * tick: the lab's test guest (LAB.md "The test guest").
 *
 * A 32-bit multiboot kernel: loads a flat GDT and an IDT, remaps the PIC, programs the PIT at
 * 100 Hz, halts between interrupts, and every 100 timer interrupts (about once a second) prints
 * "tick N" to COM1. The counter proves liveness, and that a live-migrated guest was not rebooted
 * (N continues instead of restarting at 1). No disk, no NIC; runs in 32 MiB under TCG.
 *
 * Health faults on request, for Haven's hung-guest checks: the timer handler polls the PS/2
 * keyboard (`virsh send-key GUEST KEY_P` / `KEY_W`, libvirt's sendKey):
 *   p  the kernel "panics": writes 1 (PANICKED) to the pvpanic port 0x505, prints
 *      "tick: panic", and stops with interrupts off (QEMU still runs unless on_crash destroys)
 *   w  stops feeding the watchdog (prints "tick: watchdog feeding stopped"); the guest keeps
 *      ticking, so only the watchdog tells that it is "hung"
 * The watchdog: an i6300esb PCI device (vendor 8086, device 25ab), if present, found by a scan
 * of bus 0, armed at boot with both stages ~0.5 s (the action fires ~1 s after the last feed)
 * and fed ten times a second. "tick: watchdog armed" says it was found.
 *
 * Build: deploy/lab/guest/build [OUTDIR]  (as --32, ld -m elf_i386 -Ttext=0x100000)
 */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0
        .set COM1, 0x3F8
        .set HZ, 100
        .set PIT_DIVISOR, 11932         /* 1193182 Hz / 11932 = 100 Hz */
        .set PVPANIC, 0x505             /* ISA pvpanic: bit 0 = guest panicked */
        .set ESB_ID, 0x25AB8086         /* i6300esb: device << 16 | vendor */
        .set ESB_PRELOAD, 500           /* x 32768 x 30 ns = 0.49 s per stage (1 kHz scale) */

        .text
        .globl _start
        .align 4
multiboot_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

_start:
        cli
        lgdt gdt_descriptor
        ljmp $0x08, $reload_segments
reload_segments:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %fs
        movw %ax, %gs
        movw %ax, %ss
        movl $stack_top, %esp

        call serial_init
        call pic_remap
        call idt_init
        call pit_init
        call esb_init

        movl $hello, %esi
        call serial_puts
        sti
idle:
        hlt
        jmp idle

/* COM1: 115200 baud, 8N1, FIFO on, no interrupts. */
serial_init:
        movw $COM1+1, %dx
        movb $0x00, %al
        outb %al, %dx           /* no UART interrupts */
        movw $COM1+3, %dx
        movb $0x80, %al
        outb %al, %dx           /* DLAB on */
        movw $COM1+0, %dx
        movb $0x01, %al
        outb %al, %dx           /* divisor low: 115200 baud */
        movw $COM1+1, %dx
        movb $0x00, %al
        outb %al, %dx           /* divisor high */
        movw $COM1+3, %dx
        movb $0x03, %al
        outb %al, %dx           /* 8N1, DLAB off */
        movw $COM1+2, %dx
        movb $0xC7, %al
        outb %al, %dx           /* FIFO on, cleared */
        ret

/* Send the byte in %al to COM1 once the transmitter is empty. */
serial_putc:
        pushl %eax
        movw $COM1+5, %dx
1:      inb %dx, %al
        testb $0x20, %al
        jz 1b
        popl %eax
        movw $COM1, %dx
        outb %al, %dx
        ret

/* Send the NUL-terminated string at %esi. */
serial_puts:
1:      lodsb
        testb %al, %al
        jz 2f
        call serial_putc
        jmp 1b
2:      ret

/* Remap IRQ 0-15 to vectors 32-47; unmask only IRQ 0 (the PIT). */
pic_remap:
        movb $0x11, %al
        outb %al, $0x20
        outb %al, $0xA0
        movb $0x20, %al
        outb %al, $0x21
        movb $0x28, %al
        outb %al, $0xA1
        movb $0x04, %al
        outb %al, $0x21
        movb $0x02, %al
        outb %al, $0xA1
        movb $0x01, %al
        outb %al, $0x21
        outb %al, $0xA1
        movb $0xFE, %al
        outb %al, $0x21
        movb $0xFF, %al
        outb %al, $0xA1
        ret

/* PIT channel 0, mode 3 (square wave), lobyte/hibyte. */
pit_init:
        movb $0x36, %al
        outb %al, $0x43
        movw $PIT_DIVISOR, %ax
        outb %al, $0x40
        movb %ah, %al
        outb %al, $0x40
        ret

/* 256 interrupt gates to ignore_isr, then vector 32 to timer_isr. */
idt_init:
        movl $idt, %edi
        movl $ignore_isr, %eax
        movl $256, %ecx
1:      call set_gate
        addl $8, %edi
        loop 1b
        movl $idt + 32 * 8, %edi
        movl $timer_isr, %eax
        call set_gate
        lidt idt_descriptor
        ret

/* Write an interrupt gate for handler %eax at %edi (selector 0x08, present, ring 0). */
set_gate:
        movw %ax, (%edi)
        movw $0x08, 2(%edi)
        movb $0x00, 4(%edi)
        movb $0x8E, 5(%edi)
        pushl %eax
        shrl $16, %eax
        movw %ax, 6(%edi)
        popl %eax
        ret

ignore_isr:
        pushl %eax
        movb $0x20, %al
        outb %al, $0x20
        popl %eax
        iret

timer_isr:
        pusha
        call keyboard_poll
        cmpl $0, dead
        jne 9f
        cmpl $0, esb_base
        je 1f
        cmpl $0, starve
        jne 1f
        movl jiffies, %eax
        xorl %edx, %edx
        movl $10, %ebx
        divl %ebx
        testl %edx, %edx
        jnz 1f
        call esb_feed
1:      incl jiffies
        cmpl $HZ, jiffies
        jb 9f
        movl $0, jiffies
        incl ticks
        movl $tick_prefix, %esi
        call serial_puts
        movl ticks, %eax
        call print_decimal
        movb $'\n', %al
        call serial_putc
9:      movb $0x20, %al
        outb %al, $0x20
        popa
        iret

/* A key pressed? (PS/2 output buffer full.) 'p' panics, 'w' stops feeding the watchdog.
 * Scancode set 1 (translated, SeaBIOS's default) or set 2, make codes only. */
keyboard_poll:
        inb $0x64, %al
        testb $0x01, %al
        jz 9f
        inb $0x60, %al
        cmpb $0x19, %al                 /* 'p', set 1 */
        je panic
        cmpb $0x4D, %al                 /* 'p', set 2 */
        je panic
        cmpb $0x11, %al                 /* 'w', set 1 */
        je starve_watchdog
        cmpb $0x1D, %al                 /* 'w', set 2 */
        je starve_watchdog
9:      ret
starve_watchdog:
        cmpl $0, starve
        jne 9b
        movl $1, starve
        movl $starve_msg, %esi
        call serial_puts
        ret
panic:
        movl $panic_msg, %esi
        call serial_puts
        movw $PVPANIC, %dx
        movb $0x01, %al
        outb %al, %dx                   /* pvpanic: PANICKED */
        movl $1, dead
        cli
1:      hlt                             /* dead: no more ticks, interrupts off */
        jmp 1b

/* PCI config address for bus 0, device %ebx (0-31), register %ecx -> %eax. */
pci_addr:
        movl %ebx, %eax
        shll $11, %eax
        orl %ecx, %eax
        orl $0x80000000, %eax
        ret

/* Find the i6300esb on bus 0, read BAR0, enable memory decoding, set both timers, arm it. */
esb_init:
        xorl %ebx, %ebx
1:      xorl %ecx, %ecx
        call pci_addr
        movw $0xCF8, %dx
        outl %eax, %dx
        movw $0xCFC, %dx
        inl %dx, %eax
        cmpl $ESB_ID, %eax
        je 2f
        incl %ebx
        cmpl $32, %ebx
        jb 1b
        ret                             /* no watchdog device: nothing to feed */
2:      movl $0x10, %ecx                /* BAR0 */
        call pci_addr
        movw $0xCF8, %dx
        outl %eax, %dx
        movw $0xCFC, %dx
        inl %dx, %eax
        andl $0xFFFFFFF0, %eax
        jz 9f                           /* not mapped by the firmware */
        movl %eax, esb_base
        movl $0x04, %ecx                /* command: memory space on */
        call pci_addr
        movw $0xCF8, %dx
        outl %eax, %dx
        movw $0xCFC, %dx
        inw %dx, %ax
        orw $0x0002, %ax
        outw %ax, %dx
        movl $0x60, %ecx                /* config: reboot enabled, 1 kHz, no interrupt (3) */
        call pci_addr
        movw $0xCF8, %dx
        outl %eax, %dx
        movw $0xCFC, %dx
        movw $0x0003, %ax
        outw %ax, %dx
        movl esb_base, %edi
        call esb_unlock
        movl $ESB_PRELOAD, 0x00(%edi)   /* timer 1 */
        call esb_unlock
        movl $ESB_PRELOAD, 0x04(%edi)   /* timer 2 */
        movl $0x68, %ecx                /* lock register: enable */
        call pci_addr
        movw $0xCF8, %dx
        outl %eax, %dx
        movw $0xCFC, %dx
        movb $0x02, %al
        outb %al, %dx
        call esb_feed
        movl $armed_msg, %esi
        call serial_puts
9:      ret

/* The unlock sequence before writing a reload or timer register (base in %edi). */
esb_unlock:
        movw $0x80, 0x0C(%edi)
        movw $0x86, 0x0C(%edi)
        ret

/* Reload the watchdog: timer back to stage 1. */
esb_feed:
        pushl %edi
        movl esb_base, %edi
        call esb_unlock
        movw $0x100, 0x0C(%edi)
        popl %edi
        ret

/* Print %eax in decimal. */
print_decimal:
        movl $digits_end, %edi
        movl $10, %ebx
1:      xorl %edx, %edx
        divl %ebx
        addb $'0', %dl
        decl %edi
        movb %dl, (%edi)
        testl %eax, %eax
        jnz 1b
2:      movb (%edi), %al
        call serial_putc
        incl %edi
        cmpl $digits_end, %edi
        jb 2b
        ret

        .data
        .align 8
gdt:
        .quad 0x0000000000000000        /* null */
        .quad 0x00CF9A000000FFFF        /* 0x08: code, flat 4 GiB */
        .quad 0x00CF92000000FFFF        /* 0x10: data, flat 4 GiB */
gdt_end:
gdt_descriptor:
        .word gdt_end - gdt - 1
        .long gdt
idt_descriptor:
        .word 256 * 8 - 1
        .long idt
hello:
        .asciz "tick: booted\n"
tick_prefix:
        .asciz "tick "
panic_msg:
        .asciz "tick: panic\n"
starve_msg:
        .asciz "tick: watchdog feeding stopped\n"
armed_msg:
        .asciz "tick: watchdog armed\n"
esb_base:
        .long 0
starve:
        .long 0
dead:
        .long 0
jiffies:
        .long 0
ticks:
        .long 0
digits:
        .space 12
digits_end:

        .bss
        .align 16
idt:
        .space 256 * 8
stack:
        .space 4096
stack_top:

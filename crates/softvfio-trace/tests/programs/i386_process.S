# An i386 program (32-bit code): dup2(1, 10), close(10), close(10) again,
# write "i386\n"; exits with 1 + 2 + 4 when the three answers are 10, 0,
# -EBADF.
        .globl _start
        .text
_start:
        xor %edi, %edi
        mov $63, %eax
        mov $1, %ebx
        mov $10, %ecx
        int $0x80
        cmp $10, %eax
        jne 1f
        or $1, %edi
1:      mov $6, %eax
        mov $10, %ebx
        int $0x80
        test %eax, %eax
        jne 2f
        or $2, %edi
2:      mov $6, %eax
        mov $10, %ebx
        int $0x80
        cmp $-9, %eax
        jne 3f
        or $4, %edi
3:      mov $4, %eax
        mov $1, %ebx
        mov $msg, %ecx
        mov $5, %edx
        int $0x80
        mov $1, %eax
        mov %edi, %ebx
        int $0x80
        .data
msg:    .ascii "i386\n"
